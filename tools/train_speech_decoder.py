"""Train the speech decoder's models (NeMo models, Lightning trainer, Hydra config): the token-to-mel
model, or the HiFi-GAN vocoder of the full recipe (a config with ``model.generator``).

    .venv/bin/python tools/train_speech_decoder.py                          # the mini recipe
    .venv/bin/python tools/train_speech_decoder.py model.net.head=flow name=speech_decoder_mini_flow
    .venv/bin/python tools/train_speech_decoder.py model.adversarial.weight=0.1 init_from_nemo_model=DECODER.nemo
    .venv/bin/python tools/train_speech_decoder.py --config-name full       # GLM-4-Voice scale (a GPU)
    .venv/bin/python tools/train_speech_decoder.py --config-name hifigan_full   # its vocoder (GPUs)

Writes <exp_dir>/<name>/<name>.nemo and <name>.train.json (steps, minutes, whether the time guard
cut the schedule short, the last validation mel L1, library versions). A rerun resumes from the
newest Lightning checkpoint in <exp_dir>/<name>/checkpoints/ (``resumed_from`` in the record; the
minutes are this run's) if the model settings are the checkpoint's (others are refused, naming the
keys); a second run on the same folder is refused. With no checkpoint there,
``init_from_nemo_model`` starts from another decoder's weights (e.g. an L1 model, to add the adversarial
term to it). Griffin-Lim, the mini vocoder, needs no
training; tools/decode_speech.py turns tokens into audio with either vocoder.
"""

import time
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from nemo.core.config import hydra_runner

from megatron_speech import atomic, nemo_runs
from megatron_speech.speech_decoder.model import SpeechDecoderModel, adversarial_settings
from megatron_speech.speech_decoder.vocoder import hifigan_model_config

CONF = str(Path(__file__).resolve().parents[1] / "examples" / "speech_decoder" / "conf")


@hydra_runner(config_path=CONF, config_name="mini")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.exp_manager.exp_dir) / cfg.name
    with nemo_runs.run_folder(out) as resume:
        train(cfg, out, resume)


def train(cfg: DictConfig, out: Path, resume: str | None) -> None:
    trainer = pl.Trainer(**trainer_settings(cfg), default_root_dir=str(out), callbacks=[nemo_runs.ExactResume()])
    model = build_model(cfg.model, trainer)
    nemo_runs.check_resume_settings(resume, model.cfg)
    if not resume and cfg.get("init_from_nemo_model"):
        print(f"starting from the weights of {cfg.init_from_nemo_model}", flush=True)
        model.maybe_init_from_pretrained_checkpoint(cfg)
    start = time.perf_counter()
    trainer.fit(model, ckpt_path=resume)
    minutes = (time.perf_counter() - start) / 60
    model.save_to(str(out / f"{cfg.name}.nemo"))
    max_steps = int(cfg.trainer.get("max_steps", -1))
    cut_short = nemo_runs.cut_short(trainer, max_steps)
    vocoder = "generator" in cfg.model
    val = trainer.callback_metrics.get("val_loss" if vocoder else "val_mel_l1")
    report = {"name": cfg.name, "model": "hifigan" if vocoder else model.net_settings.head, "resumed_from": resume,
              "train_minutes": round(minutes, 1), "steps": trainer.global_step, "max_steps": max_steps,
              "cut_short": cut_short, "val_mel_l1": None if val is None else float(val),
              "parameters": sum(p.numel() for p in (model.generator if vocoder else model.net).parameters()),
              "versions": nemo_runs.versions(), "config": OmegaConf.to_container(model.cfg, resolve=True)}
    atomic.write_json(out / f"{cfg.name}.train.json", report)
    print(f"{cfg.name}: {trainer.global_step} steps in {minutes:.1f} min, validation mel L1 {report['val_mel_l1']}")
    if cut_short:
        nemo_runs.warn_cut_short(trainer.global_step, max_steps, cfg.trainer.get("max_time"))


def trainer_settings(cfg: DictConfig) -> dict:
    """``cfg.trainer``, less the gradient clipping where the model steps two optimizers itself (the
    adversarial term: it clips each by ``model.adversarial.grad_clip``; Lightning refuses both)."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    if "generator" not in cfg.model and adversarial_settings(cfg.model).weight > 0:
        settings["gradient_clip_val"] = None
    return settings


def build_model(model: DictConfig, trainer: pl.Trainer | None):
    """The token-to-mel model, or NeMo's HiFi-GAN on the same mel frames (``model.generator``)."""
    if "generator" in model:
        from nemo.collections.tts.models import HifiGanModel

        return HifiGanModel(hifigan_model_config(model), trainer=trainer)
    return SpeechDecoderModel(model, trainer=trainer)


if __name__ == "__main__":
    main()
