"""Which damage to a mel costs the judges what the token-to-mel model loses: copy-synthesis of true
mels, damaged in one way at a time, judged like decoded audio (Griffin-Lim, both judges).

    .venv/bin/python examples/speech_decoder/mel_damage.py work/speech_corpus/test.jsonl \
        --voices flite:slt flite:awb flite:kal16 --limit 25 --output work/speech_decoder/mel_damage.json
    # the decoder's own mels on the same utterances, as they are and sharpened in time:
    .venv/bin/python examples/speech_decoder/mel_damage.py work/speech_corpus/test.jsonl \
        --voices flite:slt flite:awb flite:kal16 --limit 25 --output work/speech_decoder/mel_sharpen.json \
        --decoder DECODER.nemo --speech-tokenizer TOKENIZER.nemo --sharpen 0.5 1.0

The decoder's mels are about 0.18 (mean absolute, normalised units) from the truth, and its audio
25-27 WER points behind copy-synthesis. The same distance can be blur in time (transitions lost),
blur across mel bins (harmonics and formant edges lost), the detail inside a token lost (each
token's 5 frames replaced by their mean: the best a decoder that knows only the token could do
with a constant), or unstructured noise; each costs the judges differently, and that says what a
better decoder has to keep.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from megatron_speech import atomic
from megatron_speech.evaluation import decoded_speech
from megatron_speech.evaluation.judges import JUDGES
from megatron_speech.speech.audio import load_audio
from megatron_speech.speech_decoder.mel import MelSettings, MelSpectrogram, griffin_lim


def blur(mel: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Centred moving average over ``width`` frames (dim -1) or mel bins (dim 0), edges replicated."""
    x = mel if dim == -1 else mel.T
    padded = F.pad(x[None], ((width - 1) // 2, width // 2), mode="replicate")[0]
    out = F.avg_pool1d(padded[None], width, stride=1)[0]
    return out if dim == -1 else out.T


def token_mean(mel: torch.Tensor, frames_per_token: float = 5.0) -> torch.Tensor:
    """Each token's frames replaced by their mean (the last, partial token too). A token spans
    ``frames_per_token`` frames (5 at 12.5 Hz, 2.5 at 25 Hz): token k holds the frames from
    round(k x frames_per_token), so at 25 Hz the tokens alternate 3 and 2 frames."""
    out, frames = mel.clone(), mel.shape[-1]
    bounds = sorted({min(frames, int(k * frames_per_token + 0.5)) for k in range(int(frames / frames_per_token) + 2)})
    for start, end in zip(bounds, bounds[1:]):
        out[:, start:end] = mel[:, start:end].mean(-1, keepdim=True)
    return out


def noise(mel: torch.Tensor, mean_abs: float, seed: int) -> torch.Tensor:
    """Gaussian noise whose mean absolute value is ``mean_abs`` (E|x| = sigma * sqrt(2 / pi))."""
    generator = torch.Generator().manual_seed(seed)
    return mel + torch.randn(mel.shape, generator=generator) * mean_abs / np.sqrt(2 / np.pi)


def sharpen(mel: torch.Tensor, amount: float) -> torch.Tensor:
    """Unsharp masking in time: the frames pushed away from their 3-frame average by ``amount``
    times the difference (transitions steeper), each bin on its own."""
    return mel + amount * (mel - blur(mel, 3, -1))


def damages_at(frames_per_token: float) -> dict:
    """Each damage by name: a function of (mel, utterance index)."""
    return {**DAMAGES, "token_mean": lambda m, i: token_mean(m, frames_per_token)}


DAMAGES = {
    "copy_synthesis": lambda m, i: m,
    "token_mean": lambda m, i: token_mean(m),
    "time_blur_3": lambda m, i: blur(m, 3, -1),
    "time_blur_5": lambda m, i: blur(m, 5, -1),
    "bin_blur_3": lambda m, i: blur(m, 3, 0),
    "bin_blur_5": lambda m, i: blur(m, 5, 0),
    "noise_0.18": lambda m, i: noise(m, 0.18, i),
}


def decoder_versions(decoder_path: str, tokenizer_path: str | None, amounts: list[float], manifest: Path,
                     lines: list[tuple[int, dict]], fallback_speaker: str = "flite:slt") -> dict:
    """Copy-synthesis, the decoder's mels of each utterance's tokens (computed from its audio, as the
    decoder evaluation does) and those mels sharpened by each amount, as "damages" of the true mel."""
    from megatron_speech.speech_decoder.decode import load_decoder
    from megatron_speech.speech_tokenizer.load import load_speech_tokenizer

    if not tokenizer_path:
        raise SystemExit("--decoder needs --speech-tokenizer (the tokenizer whose tokens it decodes)")
    decoder, tokenizer = load_decoder(decoder_path), load_speech_tokenizer(tokenizer_path)
    cache: dict[int, torch.Tensor] = {}

    def decoded(index: int) -> torch.Tensor:
        if index not in cache:
            number, line = lines[index]
            audio = load_audio(manifest, number, line, decoder.mel_settings.sample_rate)
            tokens = decoded_speech.tokens_of(tokenizer, audio)
            _, cache[index] = decoded_speech.decode_as(decoder, tokenizer, audio, tokens, line, fallback_speaker)
        return cache[index]

    versions = {"copy_synthesis": DAMAGES["copy_synthesis"], "decoded": lambda m, i: decoded(i)}
    for amount in amounts:
        versions[f"decoded_sharpen_{amount:g}"] = lambda m, i, a=amount: sharpen(decoded(i), a)
    return versions


def main() -> None:
    from nemo.collections.asr.metrics.wer import word_error_rate
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--voices", nargs="+")
    parser.add_argument("--limit", type=int, default=25, help="utterances a voice")
    parser.add_argument("--output", required=True)
    parser.add_argument("--decoder", help="also the mels this token-to-mel .nemo makes of the utterances' tokens, "
                        "as they are and sharpened in time (needs --speech-tokenizer)")
    parser.add_argument("--speech-tokenizer")
    parser.add_argument("--token-rate", type=float, default=12.5,
                        help="tokens a second, for token_mean (12.5: 5 frames a token; 25: 2.5)")
    parser.add_argument("--sharpen", type=float, nargs="*", default=[0.5, 1.0], help="amounts for the decoder's mels")
    args = parser.parse_args()
    settings, manifest, output = MelSettings(), Path(args.manifest), Path(args.output)
    mel_of = MelSpectrogram(settings)
    lines = decoded_speech.read_lines(manifest, args.limit, args.voices)
    folder = output.parent / f"{output.stem}_audio"
    frames, tokens = settings.token_frames(args.token_rate)
    if args.decoder is None:
        damages = damages_at(frames / tokens)
    else:
        damages = decoder_versions(args.decoder, args.speech_tokenizer, args.sharpen, manifest, lines)
    paths: dict[str, list[Path]] = {name: [] for name in damages}
    distance: dict[str, list[float]] = {name: [] for name in damages}
    for index, (number, line) in enumerate(tqdm(lines, desc="damage + Griffin-Lim", unit="utt")):
        mel = mel_of(load_audio(manifest, number, line, settings.sample_rate)[None])[0]
        for name, damage in damages.items():
            damaged = damage(mel, index)
            frames = min(mel.shape[-1], damaged.shape[-1])
            distance[name].append(float((damaged[:, :frames] - mel[:, :frames]).abs().mean()))
            path = folder / name / f"{Path(line['audio_filepath']).stem}-{number}.wav"
            decoded_speech.write_audio(path, griffin_lim(damaged, settings), settings.sample_rate)
            paths[name].append(path)
    refs = [line["text"] for _, line in lines]
    report = {"manifest": str(manifest), "utterances": len(lines), "voices": args.voices, "damages": {}}
    for judge_name in sorted(JUDGES):
        judge = JUDGES[judge_name]()
        for name in damages:
            wer = word_error_rate(judge.transcribe(paths[name]), refs)
            report["damages"].setdefault(name, {"mel_l1": float(np.mean(distance[name]))})[judge_name] = wer
    atomic.write_json(output, report)
    judges = sorted(JUDGES)
    print(f"| damage | mel L1 | {' | '.join(judges)} |\n|---|---:|" + "---:|" * len(judges))
    for name, row in report["damages"].items():
        print(f"| {name} | {row['mel_l1']:.3f} | " + " | ".join(f"{row[j]:.1%}" for j in judges) + " |")


if __name__ == "__main__":
    main()
