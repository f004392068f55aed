"""Train the speech tokenizer (NeMo model, Lightning trainer, Hydra config), then report WER and codes.

    .venv/bin/python tools/train_speech_tokenizer.py                     # the Whisper mini recipe (default)
    .venv/bin/python tools/train_speech_tokenizer.py model.vq.pooling_kernel_size=2 name=whisper_vq_mini_25hz
    .venv/bin/python tools/train_speech_tokenizer.py --config-name mini  # the Conformer from scratch
    .venv/bin/python tools/train_speech_tokenizer.py --config-name mini 'model.subwords={vocab_size: 256}'

Writes <exp_dir>/<name>/<name>.nemo and <name>.eval.json (WER and CER on held-out sentences of the
training voices and on the held-out voice, also per voice; codebook usage and perplexity, training
time, library versions, the validation figures by step). A rerun resumes from the newest Lightning
checkpoint in <exp_dir>/<name>/checkpoints/ (the validations before it come with it; ``resumed_from`` in
the report, whose minutes are this run's) if the model settings are the checkpoint's (other settings
are refused, naming the keys); a second run on the same folder is refused.
tools/evaluate_speech_tokenizer.py does the evaluation alone, for any manifest.
"""

import time
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo.core.config import hydra_runner

from megatron_speech import atomic, nemo_runs
from megatron_speech.speech_tokenizer.evaluate import evaluate_manifest, report_lines
from megatron_speech.speech_tokenizer.subwords import train_subword_model
from megatron_speech.speech_tokenizer.load import model_class

CONF = str(Path(__file__).resolve().parents[1] / "examples" / "speech_tokenizer" / "conf")


@hydra_runner(config_path=CONF, config_name="whisper_mini")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.exp_manager.exp_dir) / cfg.name
    with nemo_runs.run_folder(out) as resume:
        train(cfg, out, resume)


def train(cfg: DictConfig, out: Path, resume: str | None) -> None:
    subwords = cfg.model.get("subwords")
    if subwords and not subwords.get("model_path"):
        model_path = train_subword_model(cfg.model.train_ds.manifest_filepath, subwords.vocab_size, out / "subwords")
        with open_dict(subwords):
            subwords.model_path = str(model_path)
    trainer = pl.Trainer(**cfg.trainer, default_root_dir=str(out), callbacks=[nemo_runs.ExactResume()])
    model = model_class(cfg.get("model_type", "conformer"))(cfg.model, trainer=trainer)
    nemo_runs.check_resume_settings(resume, model.cfg)
    start = time.perf_counter()
    trainer.fit(model, ckpt_path=resume)
    minutes = (time.perf_counter() - start) / 60
    model.save_to(str(out / f"{cfg.name}.nemo"))
    corpus = Path(cfg.model.train_ds.manifest_filepath).parent
    max_steps = int(cfg.trainer.get("max_steps", -1))
    cut_short = nemo_runs.cut_short(trainer, max_steps)
    if cut_short:
        nemo_runs.warn_cut_short(trainer.global_step, max_steps, cfg.trainer.get("max_time"))
    report = {"name": cfg.name, "model_type": cfg.get("model_type", "conformer"), "token_rate": model.token_rate,
              "resumed_from": resume, "train_minutes": round(minutes, 1),
              "epochs": trainer.current_epoch, "steps": trainer.global_step, "max_steps": max_steps,
              "cut_short": cut_short, "versions": nemo_runs.versions(),
              "validation": model.validation_history,
              "results": [evaluate_manifest(model, corpus / f"{m}.jsonl") for m in ("test", "test_heldout_voice")],
              "config": OmegaConf.to_container(cfg.model, resolve=True)}
    atomic.write_json(out / f"{cfg.name}.eval.json", report)
    for result in report["results"]:
        print("\n".join(report_lines(result)))
    if cut_short:
        nemo_runs.warn_cut_short(trainer.global_step, max_steps, cfg.trainer.get("max_time"))


if __name__ == "__main__":
    main()
