"""Synthesize the multi-speaker English speech corpus (WordNet sentences, espeak-ng and flite voices).

    .venv/bin/python tools/build_speech_corpus.py work/speech_corpus

Writes 16 kHz wavs and NeMo-style manifests (train/dev/test, plus dev/test of the held-out voice).
Rerunning reuses finished wavs and rewrites identical manifests.
"""

import argparse
import json

from megatron_speech.speech.corpus import SpeechCorpusConfig, build_corpus
from megatron_speech.speech.voices import DEFAULT_VOICES, VoiceVariation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    defaults = SpeechCorpusConfig  # one place for the defaults: the config's own
    parser.add_argument("--num-sentences", type=int, default=defaults.num_sentences)
    parser.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES),
                        help="engine:voice, e.g. flite:slt, espeak:en-gb, festival:ked_diphone")
    parser.add_argument("--held-out-voice", default=defaults.held_out_voice)
    parser.add_argument("--voices-per-sentence", type=int, default=defaults.voices_per_sentence)
    parser.add_argument("--vary-voices", action="store_true",
                        help="each training utterance draws its own tempo, pitch and vocal-tract warp")
    parser.add_argument("--dev-sentences", type=int, default=defaults.dev_sentences)
    parser.add_argument("--test-sentences", type=int, default=defaults.test_sentences)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    args = parser.parse_args()
    summary = build_corpus(SpeechCorpusConfig(
        output_dir=args.output_dir, num_sentences=args.num_sentences, voices=args.voices,
        held_out_voice=args.held_out_voice, voices_per_sentence=args.voices_per_sentence,
        variation=VoiceVariation() if args.vary_voices else None, dev_sentences=args.dev_sentences,
        test_sentences=args.test_sentences, seed=args.seed, workers=args.workers,
    ))
    print(json.dumps(summary["counts"], indent=2))


if __name__ == "__main__":
    main()
