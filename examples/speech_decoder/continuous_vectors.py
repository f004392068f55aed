"""Store the speech tokenizer's continuous vectors (before its quantizer) of a speech manifest, for
the decoder's quantization diagnostic (``megatron_speech/speech_decoder/vector_store.py``).

    .venv/bin/python examples/speech_decoder/continuous_vectors.py work/speech_corpus/train.jsonl \
        work/dec_vectors/train --speech-tokenizer work/speech_tokenizer/whisper_vq_mini/whisper_vq_mini.nemo

writes work/dec_vectors/train.f16 and train.json (about 1.2 GB for the mini training set at 384
dimensions); a decoder then trains on them with ``model.train_ds.vector_store=work/dec_vectors/train``
and ``model.validation_ds.vector_store=work/dec_vectors/dev`` (README, "How much is the quantization's").
"""

import argparse

from megatron_speech.speech_decoder.vector_store import write_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="a speech manifest (contract 1)")
    parser.add_argument("prefix", help="the store: PREFIX.f16 and PREFIX.json")
    parser.add_argument("--speech-tokenizer", required=True, help="a speech tokenizer .nemo (either)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from megatron_speech.speech_tokenizer.load import load_speech_tokenizer

    tokenizer = load_speech_tokenizer(args.speech_tokenizer).eval()
    meta = write_store(tokenizer, args.manifest, args.prefix, args.batch_size, args.speech_tokenizer)
    print(f"{args.prefix}: {len(meta['index'])} utterances, {meta['rows']} vectors of {meta['dim']}")


if __name__ == "__main__":
    main()
