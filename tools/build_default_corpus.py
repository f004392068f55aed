"""Write the built-in small English corpus (Python's help topics) as jsonl."""

import argparse

from megatron_speech.data.default_corpus import write_default_corpus

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", help="jsonl file to write")
    args = parser.parse_args()
    print(f"{write_default_corpus(args.output)} documents -> {args.output}")


if __name__ == "__main__":
    main()
