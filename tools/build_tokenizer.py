"""Build the speech-text tokenizer: a text tokenizer (trained here, or an existing tokenizer.json)
extended with K speech codes and the special tokens."""

import argparse
import json

from megatron_speech.data import speech_tokens
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.lm_tokenizer.train_bpe import train_bpe

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir")
    codes = parser.add_mutually_exclusive_group(required=True)
    codes.add_argument("--codebook-size", type=int, help="speech tokenizer codes K")
    codes.add_argument("--codebook-of", metavar="TOKENS_JSONL",
                       help="K as recorded beside a speech-token file (tools/tokenize_speech.py output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-tokenizer", help="existing tokenizer.json, or a directory holding one")
    source.add_argument("--train-on", help="jsonl corpus to train a byte-level BPE text tokenizer on")
    parser.add_argument("--text-vocab-size", type=int, default=2048, help="with --train-on")
    args = parser.parse_args()

    text_path = args.text_tokenizer
    if args.train_on:
        text_path = f"{args.output_dir}/trained_text_tokenizer.json"
        with open(args.train_on) as f:
            train_bpe((json.loads(line)["text"] for line in f), args.text_vocab_size, text_path)
    codebook_size = args.codebook_size or speech_tokens.codebook_size_of(args.codebook_of)
    tokenizer = SpeechTextTokenizer.from_text_tokenizer(text_path, codebook_size)
    tokenizer.save(args.output_dir)
    print(f"vocab {tokenizer.vocab_size} (text {tokenizer.text_vocab_size}, audio {tokenizer.codebook_size}) "
          f"fingerprint {tokenizer.fingerprint()} -> {args.output_dir}")


if __name__ == "__main__":
    main()
