"""Tokenize text corpora (jsonl, jsonl.gz, parquet) into Megatron indexed binaries."""

import argparse

from megatron_speech.data.preprocess import preprocess_text
from megatron_speech.tokenizer import SpeechTextTokenizer

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("inputs", nargs="+")
parser.add_argument("--tokenizer", required=True, help="directory written by tools/build_tokenizer.py")
parser.add_argument("--output-prefix", required=True)
parser.add_argument("--field", default="text")
args = parser.parse_args()
tokens = preprocess_text(args.inputs, SpeechTextTokenizer.load(args.tokenizer), args.output_prefix, args.field)
print(f"{tokens:,} tokens -> {args.output_prefix}.bin/.idx")
