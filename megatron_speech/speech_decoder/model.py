"""The token-to-mel model as a NeMo model (``ModelPT``: Hydra config, Lightning, ``.nemo``), so the
decoder is trained and shipped as the speech tokenizer is.

``cfg.net`` holds ``token_to_mel.TokenToMelSettings``, ``cfg.mel`` ``mel.MelSettings``;
``cfg.speakers`` the voices of the training manifest (the speaker table's rows, filled in on the
first build); ``cfg.token_rate`` the speech tokenizer's rate, from which the frames a token follow.
The ``.nemo`` carries everything the decoding tool needs: it never reads the tokenizer again.

``train_ds.vector_store`` and ``validation_ds.vector_store`` (a diagnostic, ``vector_store``): the
decoder takes the tokenizer's continuous vectors instead of its tokens (``net.feature_dim`` follows
from the store), to measure what the quantization loses.

``cfg.adversarial`` (``AdversarialSettings``, off at weight 0) adds a critic of the frames'
movement in time (``mel_discriminator``) to the L1 head. It trains with two optimizers, so the model
steps them itself (Lightning's manual optimization); only the decoder's optimizer is Lightning's, so
``trainer.global_step`` still counts batches, and the critic's optimizer rides in the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo.core import ModelPT
from nemo.core.classes import common as nemo_common

from megatron_speech.config_loader import build
from megatron_speech.data import speech_tokens
from megatron_speech.nemo_runs import EpochBatches, ResumableBatches
from megatron_speech.speech_decoder.data import TokenAudioPairs, collate, speakers_of
from megatron_speech.speech_decoder.mel import MelSettings, MelSpectrogram
from megatron_speech.speech_decoder.mel_discriminator import MelDiscriminator
from megatron_speech.speech_decoder.token_to_mel import TokenToMel, TokenToMelSettings
from megatron_speech.speech_decoder.vector_store import store_paths

if "megatron_speech.speech_decoder." not in nemo_common.ALLOWED_TARGET_PREFIXES:
    nemo_common.ALLOWED_TARGET_PREFIXES.append("megatron_speech.speech_decoder.")


@dataclass
class AdversarialSettings:
    """The decoder's loss becomes ``l1 + weight * (score + feature matching)`` from ``start_step`` on
    (least-squares scores and feature matching: NeMo's HiFi-GAN losses); weight 0 turns it off."""

    weight: float = 0.0
    start_step: int = 0
    channels: int = 128
    layers: int = 4
    lr: float = 2.0e-4
    grad_clip: float = 1.0  # each optimizer's gradient norm (Lightning's clipping is for one optimizer)

    def __post_init__(self) -> None:
        if self.weight < 0 or self.start_step < 0:
            raise ValueError(f"adversarial weight and start_step must be >= 0, got {self.weight}, {self.start_step}")


def adversarial_settings(model_cfg: DictConfig) -> AdversarialSettings:
    section = model_cfg.get("adversarial")
    values = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    return build(AdversarialSettings, values, "model.adversarial")


def _fill_in_from_training_data(cfg: DictConfig) -> None:
    """On the first build: the voices (the training manifest's), and the token rate and codebook size
    that the training tokens' record (contract 2) states, unless the config gives them."""
    train = cfg.get("train_ds") or {}
    with open_dict(cfg):
        if not cfg.get("speakers"):
            cfg.speakers = speakers_of(Path(train.manifest_filepath)) if train.get("manifest_filepath") else [""]
        info = speech_tokens.read_info(train.tokens_filepath) if train.get("tokens_filepath") else None
        if cfg.get("token_rate") is None:
            if info is None:
                raise ValueError("model.token_rate is not set and the training tokens have no speech tokenizer record")
            cfg.token_rate = float(info["token_rate"])
        if cfg.net.get("codebook_size") is None:
            if info is None:
                raise ValueError("model.net.codebook_size is not set and the training tokens have no speech "
                                 "tokenizer record")
            cfg.net.codebook_size = int(info["codebook_size"])
        if train.get("vector_store") and not cfg.net.get("feature_dim"):
            cfg.net.feature_dim = int(json.loads(store_paths(train.vector_store)[1].read_text())["dim"])


def net_input(batch: dict) -> torch.Tensor:
    """What the token-to-mel model reads: the tokens, or their continuous vectors when the data has them."""
    return batch["vectors"] if "vectors" in batch else batch["tokens"]


class SpeechDecoderModel(ModelPT):
    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        _fill_in_from_training_data(cfg)
        self.mel_settings = build(MelSettings, OmegaConf.to_container(cfg.mel, resolve=True), "model.mel")
        net = OmegaConf.to_container(cfg.net, resolve=True)
        frames, tokens = self.mel_settings.token_frames(cfg.token_rate)
        net.setdefault("frames_per_group", frames)
        net.setdefault("tokens_per_group", tokens)
        net.setdefault("n_mels", self.mel_settings.n_mels)
        net.setdefault("num_speakers", len(cfg.speakers))
        self.net_settings = build(TokenToMelSettings, net, "model.net")
        self.samples_per_token = int(round(self.mel_settings.sample_rate / cfg.token_rate))
        super().__init__(cfg=cfg, trainer=trainer)  # sets up the data, which needs the above
        self.net = TokenToMel(self.net_settings)
        self.mel = MelSpectrogram(self.mel_settings)
        self.validation_step_outputs: list[torch.Tensor] = []
        self.adversarial = adversarial_settings(cfg)
        if self.adversarial.weight > 0:
            if self.net_settings.head != "l1":
                raise ValueError(f"model.adversarial needs the l1 head, got head {self.net_settings.head!r}")
            self.discriminator = MelDiscriminator(self.mel_settings.n_mels, self.adversarial.channels,
                                                  self.adversarial.layers)
            self.automatic_optimization = False
            self._discriminator_optim: torch.optim.Optimizer | None = None
            self._discriminator_optim_state: dict | None = None

    def speaker_id(self, name: str | None) -> int:
        """A voice's row of the table; unknown or missing voices get row 0 (the first voice)."""
        speakers = list(self.cfg.speakers)
        return speakers.index(name) if name in speakers else 0

    # ------------------------------------------------------------------ training

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            mels = self.mel(batch["audio"])
        return self.net.loss(net_input(batch), batch["token_lengths"], batch["speakers"], mels)

    def training_step(self, batch, batch_idx):
        if self.adversarial.weight > 0:
            return self._adversarial_step(batch)
        losses = self._losses(batch)
        self.log_dict({f"train_{k}" if k == "loss" else k: v for k, v in losses.items()}, prog_bar=True, on_step=True)
        return losses["loss"]

    def _adversarial_step(self, batch: dict) -> torch.Tensor:
        """One critic step (true frames against the decoder's), then one decoder step on L1 plus the
        critic's verdict; before ``start_step`` the decoder step alone, on L1."""
        from nemo.collections.tts.losses.hifigan_losses import (
            DiscriminatorLoss, FeatureMatchingLoss, GeneratorLoss)

        lengths = batch["token_lengths"]
        with torch.no_grad():
            mels = self.mel(batch["audio"])
        mu = self.net.condition(net_input(batch), lengths, batch["speakers"])
        valid = self.net.frame_mask(lengths, mu.shape[-1])  # padding is zero in both, so never a clue
        real, fake = mels[..., : mu.shape[-1]] * valid, mu * valid
        l1 = self.net.masked_l1(mu, mels, lengths)
        losses, loss = {"l1": l1}, l1
        if self.global_step >= self.adversarial.start_step:
            critic = self._discriminator_optimizer()
            real_scores, _ = self.discriminator(real)
            fake_scores, _ = self.discriminator(fake.detach())
            loss_d, _, _ = DiscriminatorLoss()(disc_real_outputs=[real_scores], disc_generated_outputs=[fake_scores])
            critic.zero_grad()
            self.manual_backward(loss_d)
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.adversarial.grad_clip)
            critic.step()
            with torch.no_grad():
                _, real_features = self.discriminator(real)
            fake_scores, fake_features = self.discriminator(fake)
            score, _ = GeneratorLoss()(disc_outputs=[fake_scores])
            features = FeatureMatchingLoss()(fmap_r=[real_features], fmap_g=[fake_features])
            loss = l1 + self.adversarial.weight * (score + features)
            losses.update(critic=loss_d, score=score, features=features)
        decoder = self.optimizers()
        decoder.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(decoder, gradient_clip_val=self.adversarial.grad_clip, gradient_clip_algorithm="norm")
        decoder.step()
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        losses["loss"] = loss
        self.log_dict({f"train_{k}" if k == "loss" else k: v for k, v in losses.items()}, prog_bar=True, on_step=True)
        return loss

    def _discriminator_optimizer(self) -> torch.optim.Optimizer:
        """Made on first use (after any checkpoint was read, whatever Lightning's order), outside
        Lightning's optimizers so that ``global_step`` counts decoder steps."""
        if self._discriminator_optim is None:
            self._discriminator_optim = torch.optim.AdamW(self.discriminator.parameters(), lr=self.adversarial.lr,
                                                          betas=(0.8, 0.99))
            if self._discriminator_optim_state is not None:
                self._discriminator_optim.load_state_dict(self._discriminator_optim_state)
        return self._discriminator_optim

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.adversarial.weight > 0 and self._discriminator_optim is not None:
            checkpoint["discriminator_optimizer"] = self._discriminator_optim.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.adversarial.weight > 0:
            self._discriminator_optim_state = checkpoint.get("discriminator_optimizer")
            self._discriminator_optim = None

    def setup_optimizer_param_groups(self) -> None:
        """The decoder's optimizer holds the decoder (the critic, if any, has its own)."""
        self._optimizer_param_groups = [{"params": list(self.net.parameters())}]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        with torch.no_grad():
            mels = self.mel(batch["audio"])
            generated = self.net.generate(net_input(batch), batch["token_lengths"], batch["speakers"])
        l1 = self.net.masked_l1(generated, mels, batch["token_lengths"])
        self.validation_step_outputs.append(l1)
        return l1

    def on_validation_epoch_end(self):
        if self.validation_step_outputs:
            self.log("val_mel_l1", torch.stack(self.validation_step_outputs).mean(), prog_bar=True)
        self.validation_step_outputs.clear()

    def _loader(self, cfg: DictConfig, train: bool):
        dataset = TokenAudioPairs(cfg.tokens_filepath, cfg.manifest_filepath, list(self.cfg.speakers),
                                  self.mel_settings.sample_rate, self.samples_per_token,
                                  int(cfg.get("max_tokens", 50)), random_crop=train, seed=int(cfg.get("seed", 0)),
                                  vector_store=cfg.get("vector_store"), crop_step=self.net_settings.tokens_per_group)
        workers = int(cfg.get("num_workers", 0))
        if not train:
            return torch.utils.data.DataLoader(dataset, batch_size=int(cfg.batch_size), collate_fn=collate,
                                               num_workers=workers)
        batches = ResumableBatches(EpochBatches(len(dataset), int(cfg.batch_size), int(cfg.get("seed", 0))))
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                           num_workers=workers)

    def setup_training_data(self, cfg: DictConfig) -> None:
        self._train_dl = self._loader(cfg, True) if cfg and cfg.get("tokens_filepath") else None

    def setup_validation_data(self, cfg: DictConfig) -> None:
        self._validation_dl = self._loader(cfg, False) if cfg and cfg.get("tokens_filepath") else None

    @classmethod
    def list_available_models(cls):
        return None

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def decode(self, codes: list, speakers: list[int], flow_steps: int | None = None) -> list[torch.Tensor]:
        """Normalised mels [n_mels, frames] of each token sequence (``net.frame_lengths`` of its tokens);
        a decoder built on vectors (``feature_dim``) takes tensors [tokens, D] instead."""
        lengths = torch.tensor([len(c) for c in codes])
        rows = [c if torch.is_tensor(c) else torch.tensor(c, dtype=torch.long) for c in codes]
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mels = self.net.generate(padded, lengths, torch.tensor(speakers), flow_steps)
        return [m[:, :n] for m, n in zip(mels, self.net.frame_lengths(lengths).tolist())]
