"""Convert between Megatron checkpoints (any TP/PP, dist_checkpointing) and Hugging Face models.

    # Megatron -> HF (newest step; a folder AutoModelForCausalLM / AutoTokenizer load)
    python tools/convert_checkpoint.py megatron-to-hf --checkpoint work/run/checkpoints \
        --tokenizer work/tiny/tokenizer --output work/run/hf

    # HF -> Megatron (weights only; a text LM gets its vocabulary expanded with speech rows)
    python tools/convert_checkpoint.py hf-to-megatron --hf work/run/hf \
        --tokenizer work/tiny/tokenizer --output work/run/from_hf

Runs in one process on CPU; the checkpoint is resharded to TP=1, PP=1 on load.
"""

import argparse

from megatron_speech.checkpoints.convert import hf_to_megatron, megatron_to_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("megatron-to-hf", help="Megatron checkpoint root -> HF model folder")
    to_hf.add_argument("--checkpoint", required=True, help="checkpoint root (holds 'latest' and iter_*)")
    to_hf.add_argument("--step", type=int, help="which step (default: the newest)")
    to_hf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the model's")
    from_hf = sub.add_parser("hf-to-megatron", help="HF model folder -> weights-only Megatron checkpoint")
    from_hf.add_argument("--hf", required=True, help="HF folder: config.json + safetensors")
    from_hf.add_argument("--seed", type=int, default=0, help="seed for new vocabulary rows")
    for p in (to_hf, from_hf):
        p.add_argument("--tokenizer", required=True, help="speech-text tokenizer directory")
        p.add_argument("--output", required=True)
    args = parser.parse_args()
    if args.direction == "megatron-to-hf":
        path = megatron_to_hf(args.checkpoint, args.tokenizer, args.output, args.step, args.dtype)
    else:
        path = hf_to_megatron(args.hf, args.tokenizer, args.output, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
