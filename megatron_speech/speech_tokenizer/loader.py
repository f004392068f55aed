"""What both speech tokenizers share with Lightning: NeMo's Lhotse loader over a NeMo manifest, and the validation log."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict


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


def log_validation(model) -> None:
    """Mean validation loss and WER of the steps' outputs (``model.validation_step_outputs``), logged."""
    import torch

    outputs = model.validation_step_outputs
    if outputs:
        model.log("val_loss", torch.stack([o["val_loss"] for o in outputs]).mean(), prog_bar=True)
        model.log("val_wer", sum(o["wer"] for o in outputs) / len(outputs), prog_bar=True)
    outputs.clear()
