"""Evaluate a trained speech tokenizer on speech manifests: greedy WER and CER through the tokens,
in total and per voice, with codebook usage and perplexity, and how far each voice's frames fall from
the codes (what train_speech_tokenizer.py reports after training, for a checkpoint and manifests of
your choice, e.g. a new voice).

    .venv/bin/python tools/evaluate_speech_tokenizer.py \
        work/speech_tokenizer/speech_tokenizer_mini/speech_tokenizer_mini.nemo \
        work/speech_corpus/test.jsonl work/speech_corpus/test_heldout_voice.jsonl --output eval.json
"""

import argparse

from megatron_speech import atomic
from megatron_speech.speech_tokenizer.evaluate import evaluate_manifest, report_lines
from megatron_speech.speech_tokenizer.load import load_speech_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=".nemo file of either speech tokenizer")
    parser.add_argument("manifests", nargs="+", help="NeMo manifests (audio_filepath, text, speaker)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", help="write the results here as JSON")
    parser.add_argument("--unquantized", action="store_true",
                        help="also the WER with the quantizer bypassed (what the codes lose)")
    args = parser.parse_args()
    model = load_speech_tokenizer(args.model)
    results = [evaluate_manifest(model, manifest, args.batch_size, args.unquantized) for manifest in args.manifests]
    for result in results:
        print("\n".join(report_lines(result)))
    if args.output:
        atomic.write_json(args.output, {"model": args.model, "results": results})


if __name__ == "__main__":
    main()
