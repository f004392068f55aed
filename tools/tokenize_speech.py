"""Turn a speech manifest into speech-token jsonl for tools/preprocess_data.py (layouts speech/asr/tts).

    .venv/bin/python tools/tokenize_speech.py work/speech_corpus/train.jsonl work/speech_tokens/train.jsonl \
        --model work/speech_tokenizer/speech_tokenizer_mini/speech_tokenizer_mini.nemo [--on-error skip]

Batched, resumable (rerun the same command after a crash), and strict about bad audio.
"""

import argparse
import json

from megatron_speech.speech.tokenize import TokenizeConfig, tokenize_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("output")
    parser.add_argument("--model", required=True, help=".nemo file of the speech tokenizer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop")
    args = parser.parse_args()
    stats = tokenize_manifest(TokenizeConfig(args.manifest, args.output, args.model, args.batch_size, args.on_error))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
