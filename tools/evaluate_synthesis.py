"""WER of synthesized speech tokens, transcribed by the speech tokenizer's ASR head.

    .venv/bin/python tools/evaluate_synthesis.py --config examples/synthesize/mini.yaml \
        --speech-tokenizer work/speech_tokenizer/speech_tokenizer_mini/speech_tokenizer_mini.nemo \
        --texts work/t2t/tokens_test.jsonl --output work/t2t/eval_test.json

``--texts`` is speech-token jsonl (tools/tokenize_speech.py output): each unique text is synthesized
once, and its real tokens are transcribed too, for comparison.
"""

import argparse
import json

from megatron_speech import atomic
from megatron_speech import config_loader
from megatron_speech.synthesis.evaluate import evaluate_synthesis, read_records
from megatron_speech.synthesis.pipeline import SynthesisConfig, load_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="synthesis YAML: the model and generation settings")
    parser.add_argument("--speech-tokenizer", required=True, help=".nemo file whose ASR head transcribes")
    parser.add_argument("--texts", required=True, help="speech-token jsonl with the texts to synthesize")
    parser.add_argument("--limit", type=int, help="at most this many texts")
    parser.add_argument("--voices-from-records", action="store_true",
                        help="a voice-conditioned model: speak each text in its record's voice (speaker)")
    parser.add_argument("--output", help="write the report here as JSON")
    config_loader.add_overrides_argument(parser)
    args = parser.parse_args()
    try:
        config = config_loader.load(SynthesisConfig, args.config, args.set)
    except config_loader.ConfigError as exc:
        parser.error(str(exc))
    from megatron_speech.data.speech_tokens import SpeechTokenMismatch, check_same_tokenizer
    from megatron_speech.speech_tokenizer.load import describe, load_speech_tokenizer

    speech_model = load_speech_tokenizer(args.speech_tokenizer)
    try:  # the real tokens' WER means nothing when another tokenizer made them
        check_same_tokenizer(args.texts, describe(args.speech_tokenizer, speech_model), args.speech_tokenizer)
    except SpeechTokenMismatch as exc:
        raise SystemExit(f"error: {exc}") from None
    report = evaluate_synthesis(load_generator(config), speech_model, read_records(args.texts, args.limit),
                                voices_from_records=args.voices_from_records)
    report["texts"] = args.texts
    if args.output:
        atomic.write_json(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
