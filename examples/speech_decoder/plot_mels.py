"""One test utterance's true mel frames above what each decoder makes of its speech tokens: the
picture behind the WER tables of this folder's README (what a loss change does to the frames).

    .venv/bin/python examples/speech_decoder/plot_mels.py work/speech_corpus/test.jsonl mels.png \
        --speech-tokenizer TOKENIZER.nemo --decoder A.nemo B.nemo --voice flite:slt --frames 200
"""

import argparse
import json
from pathlib import Path

import torch

from megatron_speech.evaluation import decoded_speech
from megatron_speech.speech.audio import load_audio


def first_line(manifest: Path, voice: str | None) -> tuple[int, dict]:
    with manifest.open() as lines:
        for number, text in enumerate(lines, start=1):
            line = json.loads(text)
            if voice is None or line.get("speaker") == voice:
                return number, line
    raise SystemExit(f"{manifest}: no utterance of voice {voice!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("output", type=Path, help="a .png")
    parser.add_argument("--speech-tokenizer", required=True)
    parser.add_argument("--decoder", nargs="+", required=True, help="token-to-mel .nemo files, one row each")
    parser.add_argument("--voice", default="flite:slt")
    parser.add_argument("--frames", type=int, default=200, help="frames shown (62.5 a second)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_speech.speech_decoder.decode import load_decoder
    from megatron_speech.speech_tokenizer.load import load_speech_tokenizer

    number, line = first_line(args.manifest, args.voice)
    tokenizer = load_speech_tokenizer(args.speech_tokenizer)
    rows: list[tuple[str, torch.Tensor]] = []
    for path in args.decoder:
        decoder = load_decoder(path)
        audio = load_audio(args.manifest, number, line, decoder.mel_settings.sample_rate)
        if not rows:
            rows.append((f"true mels ({line['id']}, {args.voice})", decoder.mel(audio[None])[0]))
            tokens = decoded_speech.tokens_of(tokenizer, audio)
        rows.append((Path(path).stem, decoded_speech.decode_as(decoder, tokenizer, audio, tokens, line, args.voice)[1]))
    figure, axes = plt.subplots(len(rows), 1, figsize=(10, 2.0 * len(rows)), sharex=True)
    for axis, (title, mel) in zip(axes, rows):
        axis.imshow(mel[:, : args.frames].numpy(), origin="lower", aspect="auto", vmin=-2.5, vmax=2.5)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (16 ms; a token is 5)")
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
