"""What both speech tokenizers share with Lightning: NeMo's Lhotse loader over a NeMo manifest, the
validation sets, and the validation log."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from megatron_speech.nemo_runs import ResumableBatches


def lhotse_loader(cfg: DictConfig, model, text_units):
    """Batches of (audio, audio lengths, transcript ids, id lengths); ``text_units(text) -> ids``.

    With ``use_bucketing`` and ``batch_duration``, batches hold utterances of similar length: random
    batches of the mini corpus were ~40% padding. ``text_field`` picks the manifest's transcript key
    (the Whisper tokenizer reads ``raw_text``, cased and punctuated, as Whisper was trained)."""
    from nemo.collections.asr.data.audio_to_text_lhotse import LhotseSpeechToTextBpeDataset
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    with open_dict(cfg):
        cfg.sample_rate = model.cfg.sample_rate
        # Lhotse's concurrent bucketing fills buckets from a non-daemon thread that sleeps while
        # they are full, forever once training stops before the data runs out (the usual case):
        # the process never exits. Filling them in the loader's own thread costs little and
        # makes the batches independent of thread timing.
        cfg.setdefault("concurrent_bucketing", False)
    return get_lhotse_dataloader_from_config(cfg, global_rank=model.global_rank, world_size=model.world_size,
                                             dataset=LhotseSpeechToTextBpeDataset(tokenizer=text_units))


def validation_loaders(cfg: DictConfig | None, model, text_units) -> tuple[list, list[str]]:
    """Loaders of the validation set and of each of ``extra_sets`` (name -> manifest), with their names.

    Training chose its schedule by the training voices' dev set alone, which hid that longer runs lose
    the held-out voice (README); ``extra_sets: {heldout_voice: dev_heldout_voice.jsonl}`` (beside the
    validation manifest unless absolute) puts that voice's curve beside it (``val_wer_heldout_voice``)
    without touching its test set."""
    if not cfg or not cfg.get("manifest_filepath"):
        return [], []
    cfg = cfg.copy()
    with open_dict(cfg):
        extra = dict(cfg.pop("extra_sets", None) or {})
    loaders, names = [lhotse_loader(cfg, model, text_units)], [""]
    for name, manifest in extra.items():
        path = Path(cfg.manifest_filepath).parent / str(manifest)  # an absolute path stays as it is
        if not path.is_file():
            raise FileNotFoundError(f"validation_ds.extra_sets.{name}: no manifest {path}")
        one = cfg.copy()
        with open_dict(one):
            one.manifest_filepath = str(path)
        loaders.append(lhotse_loader(one, model, text_units))
        names.append(str(name))
    return loaders, names


def log_validation(model) -> None:
    """Mean validation loss and WER of each validation set, logged (``val_wer``, ``val_wer_<name>``) and kept
    by step in ``model.validation_history`` for the training report. The steps' outputs are dicts with
    ``val_loss``, ``wer`` and ``set`` (the dataloader index) in ``model.validation_step_outputs``."""
    import torch

    outputs, names = model.validation_step_outputs, getattr(model, "validation_set_names", None) or [""]
    record = {"step": int(model.trainer.global_step)} if model._trainer is not None else {}
    for index, name in enumerate(names):
        mine = [o for o in outputs if o.get("set", 0) == index]
        if not mine:
            continue
        suffix = f"_{name}" if name else ""
        loss = torch.stack([o["val_loss"] for o in mine]).mean()
        wer = sum(o["wer"] for o in mine) / len(mine)
        model.log(f"val_loss{suffix}", loss, prog_bar=not name)
        model.log(f"val_wer{suffix}", wer, prog_bar=True)
        record.update({f"val_loss{suffix}": round(float(loss), 4), f"val_wer{suffix}": round(float(wer), 4)})
    if outputs and model._trainer is not None and not model.trainer.sanity_checking:
        history = model.validation_history
        # Lightning reruns, on a resume, the validation its checkpoint was saved in, and with more than one
        # set only a part of it: the record the uninterrupted validation made is the one kept
        if not history or history[-1]["step"] != record["step"]:
            history.append(record)
    outputs.clear()


def save_history(model, checkpoint: dict) -> None:
    """Keep the validations so far in a Lightning checkpoint (the models' ``on_save_checkpoint``): a
    resumed run's report then covers the whole schedule, not only the part after the resume."""
    checkpoint["validation_history"] = list(model.validation_history)


def load_history(model, checkpoint: dict) -> None:
    model.validation_history = list(checkpoint.get("validation_history", []))


def training_loader(cfg: DictConfig, model, text_units):
    """:func:`lhotse_loader` whose batches a resumed run picks up mid-epoch (``nemo_runs.ResumableBatches``).
    A loader whose sampler runs in its workers (NeMo's tarred or Shar data) is returned as it is: a
    resume starts its epoch over."""
    import torch

    loader = lhotse_loader(cfg, model, text_units)
    if not hasattr(loader.sampler, "set_epoch"):  # the iterable-dataset case: the sampler is in the dataset
        return loader
    return torch.utils.data.DataLoader(loader.dataset, sampler=ResumableBatches(loader.sampler), batch_size=None,
                                       num_workers=loader.num_workers, pin_memory=loader.pin_memory)
