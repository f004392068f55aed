"""Training batches from indexed binaries, through Megatron-Core's dataset builder.

``BlendedMegatronDatasetBuilder`` + ``GPTDataset`` give packed, shuffled, weighted samples with
cached index files, exactly as Megatron-LM reads them. Batches are addressed by global step, so a
resumed run sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from megatron_speech.config_loader import build
from megatron_speech.data.indexed import read_metadata
from megatron_speech.lm_tokenizer import SpeechTextTokenizer


LOSS_POLICIES = ("all", "audio", "text")


@dataclass
class DataSource:
    """One indexed dataset in the mixture.

    ``loss`` picks the target positions that carry loss: ``all``; ``audio`` (audio codes and
    ``<|end_of_audio|>``, e.g. the text-to-token model on TTS pairs, which must learn the speech and
    where it stops, not the text it is given); or ``text`` (every target that is not audio, e.g. ASR).
    """

    prefix: str
    weight: float = 1.0
    layout: str = "text"
    loss: str = "all"

    def __post_init__(self) -> None:
        if self.loss not in LOSS_POLICIES:
            raise ValueError(f"{self.prefix}: loss must be one of {LOSS_POLICIES}, got {self.loss!r}")


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=list)
    seq_length: int = 128
    split: str = "98,2,0"  # train, validation, test shares of each source's documents
    seed: int = 1234
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        return build(cls, values, "data")


def check_sources(config: DataConfig, tokenizer: SpeechTextTokenizer) -> None:
    """Fail before any training step on missing data, bad weights or a foreign vocabulary."""
    if not config.sources:
        raise ValueError("the data mixture names no sources")
    for source in config.sources:
        if not source.weight > 0:
            raise ValueError(f"{source.prefix}: blend weight must be > 0, got {source.weight}")
        for suffix in (".bin", ".idx"):
            path = f"{source.prefix}{suffix}"
            try:
                open(path, "rb").close()
            except OSError as exc:
                raise FileNotFoundError(f"dataset file {path} cannot be read: {exc.strerror}") from None
        meta = read_metadata(source.prefix)
        if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint():
            raise ValueError(
                f"{source.prefix} was tokenized with tokenizer {meta.get('tokenizer_fingerprint')}, "
                f"but training uses {tokenizer.fingerprint()}: re-run preprocessing"
            )


def build_datasets(config: DataConfig, tokenizer: SpeechTextTokenizer, train_samples: int, valid_samples: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    check_sources(config, tokenizer)
    blend = ([s.prefix for s in config.sources], [s.weight for s in config.sources])
    dataset_config = GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=blend,
        split=config.split,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=config.cache_dir,
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [train_samples, valid_samples, 0], lambda: True, dataset_config
    ).build()
    return train, valid


def speech_targets(labels: np.ndarray, tokenizer: SpeechTextTokenizer) -> np.ndarray:
    """True where the target is speech: an audio code or ``<|end_of_audio|>`` (where speech stops);
    every other target is text. One rule for the loss policies and the per-target losses."""
    lo, hi = tokenizer.audio_offset, tokenizer.audio_offset + tokenizer.codebook_size
    return ((labels >= lo) & (labels < hi)) | (labels == tokenizer.eoa)


def policy_mask(labels: np.ndarray, policy: str, tokenizer: SpeechTextTokenizer) -> np.ndarray:
    """1 where a target token carries loss under ``policy`` (see ``DataSource``)."""
    if policy == "all":
        return np.ones(labels.shape, dtype=np.float32)
    speech = speech_targets(labels, tokenizer)
    if policy == "audio":
        return speech.astype(np.float32)
    return (~speech & (labels != tokenizer.boa)).astype(np.float32)


def microbatches(
    dataset,
    step: int,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    sources: list[DataSource] | None = None,
    tokenizer: SpeechTextTokenizer | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """This data-parallel rank's microbatches of global batch ``step``.

    The global batch is samples ``[step * global_batch_size, (step + 1) * global_batch_size)``;
    rank r takes the r-th contiguous slice of it, so the ranks together see each sample once.
    Each batch also names every sample's source (its index in ``sources``), for per-source losses,
    marks its speech targets (with a tokenizer), for losses split by what is predicted, and applies
    that source's loss policy to the loss mask.
    """
    per_rank = global_batch_size // dp_size
    first = step * global_batch_size + dp_rank * per_rank
    for start in range(first, first + per_rank, micro_batch_size):
        samples = [dataset[(start + j) % len(dataset)] for j in range(micro_batch_size)]
        batch = {
            key: torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples]))
            for key in ("tokens", "labels", "loss_mask", "position_ids")
        }
        source_ids = [int(s.get("dataset_id", 0)) for s in samples]  # a one-source blend has no id
        batch["source"] = torch.tensor(source_ids, dtype=torch.long)
        if tokenizer is not None:
            batch["speech_target"] = torch.from_numpy(speech_targets(batch["labels"].numpy(), tokenizer))
        if sources and any(src.loss != "all" for src in sources):
            masks = [policy_mask(np.asarray(s["labels"]), sources[i].loss, tokenizer) for s, i in zip(samples, source_ids)]
            batch["loss_mask"] = batch["loss_mask"] * torch.from_numpy(np.stack(masks))
        yield batch
