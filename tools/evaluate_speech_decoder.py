"""Judge the speech decoder: WER of original, copy-synthesis and decoded audio (both through
--vocoder) by two ASR judges we did not write (Whisper tiny.en through CTranslate2, PocketSphinx),
per voice; the tokens -> audio -> tokens round trip; real-time factors; streaming against offline.

    .venv/bin/python tools/evaluate_speech_decoder.py \
        --decoder work/speech_decoder/speech_decoder_mini/speech_decoder_mini.nemo \
        --speech-tokenizer work/speech_tokenizer/whisper_vq_mini/whisper_vq_mini.nemo \
        --manifest work/speech_corpus/test.jsonl --manifest work/speech_corpus/test_heldout_voice.jsonl \
        --voices flite:slt flite:awb flite:kal16 flite:rms espeak:en-us --limit 34 --output work/speech_decoder/eval.json

Each --manifest is judged on its first --limit utterances of each voice in --voices (all voices if not given). A
voice the decoder's speaker table lacks (the held-out voice) is decoded as --fallback-speaker.
The audio goes to <output stem>_audio/ beside <output>, with each utterance's transcripts (rows.jsonl).
The judges' transcripts are kept in --judge-cache (judge_cache.jsonl beside <output>), keyed by the
audio's bytes: a later evaluation on the same utterances hears only the audio that changed (the
decoded versions), not the originals and copy-synthesis again.
"""

import argparse
import json
from pathlib import Path

from megatron_speech import atomic
from megatron_speech.evaluation import decoded_speech
from megatron_speech.evaluation.judges import JUDGES, CachedJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoder", required=True, help="the token-to-mel .nemo")
    parser.add_argument("--speech-tokenizer", required=True, help="the speech tokenizer .nemo whose tokens it decodes")
    parser.add_argument("--manifest", action="append", required=True, help="a speech manifest (repeatable)")
    parser.add_argument("--voices", nargs="+", help="only these voices of each manifest")
    parser.add_argument("--limit", type=int, default=34, help="utterances a voice")
    parser.add_argument("--judges", nargs="+", default=sorted(JUDGES), choices=sorted(JUDGES))
    parser.add_argument("--fallback-speaker", default="flite:slt")
    parser.add_argument("--vocoder", default="griffin_lim", help="griffin_lim, or a HiFi-GAN .nemo file")
    parser.add_argument("--griffin-lim-iterations", type=int, default=32)
    parser.add_argument("--output", required=True)
    parser.add_argument("--judge-cache", help="the judges' transcripts by audio (default: judge_cache.jsonl beside --output)")
    parser.add_argument("--no-judge-cache", action="store_true", help="hear every file again, keep nothing")
    args = parser.parse_args()

    from megatron_speech.speech_decoder.decode import load_decoder
    from megatron_speech.speech_decoder.vocoder import load_vocoder
    from megatron_speech.speech_tokenizer.load import load_speech_tokenizer

    decoder, tokenizer = load_decoder(args.decoder), load_speech_tokenizer(args.speech_tokenizer)
    vocoder = load_vocoder(args.vocoder, decoder.mel_settings, args.griffin_lim_iterations)
    output = Path(args.output)
    judges = {name: JUDGES[name]() for name in args.judges}
    if not args.no_judge_cache:
        cache = Path(args.judge_cache or output.parent / "judge_cache.jsonl")
        judges = {name: CachedJudge(judge, cache) for name, judge in judges.items()}
    report = {"decoder": args.decoder, "speech_tokenizer": args.speech_tokenizer, "head": decoder.net_settings.head,
              "vocoder": args.vocoder, "griffin_lim_iterations": args.griffin_lim_iterations, "manifests": []}
    for manifest in map(Path, args.manifest):
        lines = decoded_speech.read_lines(manifest, args.limit, args.voices)
        folder = output.parent / f"{output.stem}_audio" / manifest.stem
        rows, timing = decoded_speech.make_versions(decoder, tokenizer, manifest, lines, folder, args.fallback_speaker,
                                                    vocoder)
        result = {"manifest": str(manifest), "utterances": len(rows), "wer": decoded_speech.judge_rows(rows, judges),
                  "round_trip_tokens_kept": decoded_speech.round_trip(rows),
                  "real_time_factor": {"token_to_mel": timing["token_to_mel_seconds"] / timing["audio_seconds"],
                                       "vocoder": timing["vocoder_seconds"] / timing["audio_seconds"]},
                  "streaming": decoded_speech.streaming_check(decoder, rows)}
        report["manifests"].append(result)
        atomic.write_text(folder / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        print("\n".join(table_lines(result)), flush=True)
    atomic.write_json(output, report)


def table_lines(result: dict) -> list[str]:
    lines = [f"## {result['manifest']} ({result['utterances']} utterances)", "",
             "| judge | voices | n | original | copy-synthesis | decoded |", "|---|---|---:|---:|---:|---:|"]
    for judge, groups in result["wer"].items():
        for group, g in groups.items():
            lines.append(f"| {judge} | {group} | {g['utterances']} | {g['original']:.1%} | {g['copy_synthesis']:.1%} "
                         f"| {g['decoded']:.1%} |")
    rtf, s = result["real_time_factor"], result["streaming"]
    streaming = ("not checked (offline only, or a decoder of vectors)" if s["max_abs_difference"] is None else
                 f"max |diff| {s['max_abs_difference']:.2e}, first block after {s['first_block_seconds']:.3f} s")
    lines += ["", f"round trip: {result['round_trip_tokens_kept']:.1%} of tokens kept; real-time factor token-to-mel "
              f"{rtf['token_to_mel']:.3f}, vocoder {rtf['vocoder']:.3f}; streaming vs offline: {streaming}", ""]
    return lines


if __name__ == "__main__":
    main()
