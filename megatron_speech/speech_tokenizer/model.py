"""The supervised speech tokenizer as a NeMo model: an ASR encoder with a vector-quantized bottleneck.

    waveform -> log-mel (100 frames/s) -> Conformer (subsampling, then pooling to the token rate)
             -> project -> VQ (the speech tokens) -> project -> Conformer -> CTC over text units

The tokens are whatever the quantizer keeps while the CTC loss forces the words through it, so they
carry the words at a low rate (12.5 Hz by default, one token per 80 ms). The token rate is exact by
definition: ``num_samples // samples_per_token`` tokens per utterance (10 s -> 125 at 12.5 Hz).
Causal and block-causal variants come from the Conformer's ``att_context_size`` and
``conv_context_size`` settings in the config, so tokens can be produced in a stream.

The CTC units are the config's ``labels`` (characters), or, with ``subwords.model_path``, the pieces
of a SentencePiece model packed into the ``.nemo`` (``subwords.py`` trains one on the transcripts).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, open_dict

from nemo.core import ModelPT
from nemo.core.classes import common as nemo_common

from megatron_speech.speech_tokenizer.loader import (load_history, log_validation, save_history, training_loader,
                                                     validation_loaders)
from megatron_speech.speech_tokenizer.quantizer import VectorQuantizerEMA

# NeMo instantiates `_target_`s from a .nemo file only under approved module prefixes (and only
# ModelPT / nn.Module subclasses there); ours must be approved for restore_from to work.
if "megatron_speech.speech_tokenizer." not in nemo_common.ALLOWED_TARGET_PREFIXES:
    nemo_common.ALLOWED_TARGET_PREFIXES.append("megatron_speech.speech_tokenizer.")

MEL_FRAMES_PER_SECOND = 100  # the preprocessor's 10 ms hop


def reduction_factor(token_rate: float, subsampling: int) -> int:
    """Pooling after the Conformer's subsampling that lands on ``token_rate`` tokens per second."""
    encoder_rate = MEL_FRAMES_PER_SECOND / subsampling
    factor = encoder_rate / token_rate
    if factor < 1 or abs(factor - round(factor)) > 1e-9:
        raise ValueError(f"token_rate {token_rate} Hz must divide the encoder's {encoder_rate} Hz "
                         f"({MEL_FRAMES_PER_SECOND} Hz / subsampling_factor {subsampling})")
    return int(round(factor))


class SpeechTokenizerModel(ModelPT):
    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        self.text_units = self._text_units(cfg)  # before ModelPT's __init__, which sets up the loaders
        with open_dict(cfg):
            factor = reduction_factor(cfg.token_rate, cfg.encoder.subsampling_factor)
            cfg.encoder.reduction = "pooling" if factor > 1 else None
            cfg.encoder.reduction_factor = factor
            cfg.encoder.reduction_position = -1 if factor > 1 else None
        super().__init__(cfg=cfg, trainer=trainer)
        self.samples_per_token = int(round(cfg.sample_rate / cfg.token_rate))
        self.preprocessor = ModelPT.from_config_dict(cfg.preprocessor)
        # SpecAugment masks (NeMo's module), in training only: a config without it trains as before.
        self.spec_augment = ModelPT.from_config_dict(cfg.spec_augment) if cfg.get("spec_augment") else None
        self.encoder = ModelPT.from_config_dict(cfg.encoder)
        d_model = cfg.encoder.d_model
        self.pre_quantizer = torch.nn.Linear(d_model, cfg.quantizer.dim)
        self.quantizer = VectorQuantizerEMA(cfg.quantizer.num_codes, cfg.quantizer.dim, cfg.quantizer.decay,
                                            cfg.quantizer.commitment_weight, cfg.quantizer.dead_code_threshold,
                                            normalize=cfg.quantizer.get("normalize", False))
        self.post_quantizer = torch.nn.Linear(cfg.quantizer.dim, cfg.post_encoder.d_model)
        # Characters come faster than 12.5 tokens/s, so CTC needs more frames than tokens: after its
        # Conformer layers (at the token rate, where they are cheap) the ASR head gives each token
        # `upsample` frames of character logits, reaching ctc_frame_rate.
        self.upsample = int(round(cfg.ctc_frame_rate / cfg.token_rate))
        if self.upsample < 1 or abs(self.upsample * cfg.token_rate - cfg.ctc_frame_rate) > 1e-6:
            raise ValueError(f"ctc_frame_rate {cfg.ctc_frame_rate} must be a multiple of token_rate {cfg.token_rate}")
        self.post_encoder = ModelPT.from_config_dict(cfg.post_encoder)
        self.blank = self.text_units.vocab_size  # CTC's blank: the last class
        self.num_classes = self.blank + 1
        self.ctc_head = torch.nn.Linear(cfg.post_encoder.d_model, self.upsample * self.num_classes)
        self.ctc_loss = torch.nn.CTCLoss(blank=self.blank, zero_infinity=True)
        self.validation_step_outputs: list[dict] = []
        self.validation_history: list[dict] = []  # per validation: step, val_loss, val_wer (and per extra set)

    def _text_units(self, cfg: DictConfig):
        """What the CTC head spells: a SentencePiece model (a NeMo tokenizer) or NeMo's character parser."""
        model_path = (cfg.get("subwords") or {}).get("model_path")
        if model_path:
            from nemo.collections.common.tokenizers import SentencePieceTokenizer

            return SentencePieceTokenizer(self.register_artifact("subwords.model_path", model_path))
        from nemo.collections.common.parts.preprocessing.parsers import make_parser

        return _Characters(list(cfg.labels), make_parser(labels=list(cfg.labels), name="en", do_normalize=False))

    # ------------------------------------------------------------------ the model

    @property
    def token_rate(self) -> float:
        return float(self.cfg.token_rate)

    def token_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.samples_per_token, rounding_mode="floor")

    def encode(self, audio: torch.Tensor, audio_lengths: torch.Tensor):
        """Continuous pre-quantizer frames [B, T, D] at the token rate, and their lengths."""
        features, feature_lengths = self.preprocessor(input_signal=audio, length=audio_lengths)
        if self.spec_augment is not None and self.training:
            features = self.spec_augment(input_spec=features, length=feature_lengths)
        encoded, _ = self.encoder(audio_signal=features, length=feature_lengths)
        lengths = self.token_lengths(audio_lengths)
        frames = self.pre_quantizer(encoded.transpose(1, 2))[:, : int(lengths.max())]
        if frames.shape[1] < int(lengths.max()):  # padding rounding: never expected, but never silent
            raise RuntimeError(f"encoder gave {frames.shape[1]} frames for {int(lengths.max())} tokens")
        return frames, lengths

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor):
        frames, lengths = self.encode(audio, audio_lengths)
        mask = torch.arange(frames.shape[1], device=frames.device)[None] < lengths[:, None]
        vq = self.quantizer(frames, mask)
        logits, ctc_lengths = self._asr_head(vq.quantized, lengths)
        return logits.log_softmax(-1), ctc_lengths, vq

    def _asr_head(self, quantized: torch.Tensor, lengths: torch.Tensor):
        """Character logits [B, T * upsample, labels + 1] from quantized token vectors [B, T, D]."""
        x = self.post_quantizer(quantized)
        decoded, _ = self.post_encoder(audio_signal=x.transpose(1, 2), length=lengths)
        logits = self.ctc_head(decoded.transpose(1, 2))
        frames = x.shape[1] * self.upsample
        return logits.reshape(x.shape[0], frames, self.num_classes), lengths * self.upsample

    @torch.no_grad()
    def tokenize(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[list[int]]:
        """Speech tokens of each utterance (exactly ``num_samples // samples_per_token`` of them)."""
        frames, lengths = self.encode(audio, audio_lengths)
        codes = self.quantizer.nearest(frames.reshape(-1, frames.shape[-1]).float()).view(frames.shape[:2])
        return [c[:n].tolist() for c, n in zip(codes, lengths.tolist())]

    @torch.no_grad()
    def continuous_vectors(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[torch.Tensor]:
        """Each utterance's vectors just before the quantizer [tokens, D] (what ``tokenize`` rounds to
        codes), as the Whisper tokenizer gives them."""
        frames, lengths = self.encode(audio, audio_lengths)
        return [f[:n].float() for f, n in zip(frames, lengths.tolist())]

    @torch.no_grad()
    def transcribe_tokens(self, codes: list[list[int]]) -> list[str]:
        """Greedy CTC transcription of token sequences (to check what synthetic tokens say)."""
        return self.transcribe_vectors([self.quantizer.codebook[torch.tensor(c, dtype=torch.long)] for c in codes])

    @torch.no_grad()
    def transcribe_vectors(self, vectors: list[torch.Tensor]) -> list[str]:
        """Greedy CTC transcription of vectors in the quantizer's space [tokens, D] (``continuous_vectors``):
        the quantizer bypassed, as the Whisper tokenizer's."""
        padded = torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True)
        lengths = torch.tensor([v.shape[0] for v in vectors])
        logits, ctc_lengths = self._asr_head(padded.to(self.quantizer.codebook.dtype), lengths)
        return self.greedy_decode(logits, ctc_lengths)

    @torch.no_grad()
    def transcribe_audio(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[str]:
        """Greedy transcription through the quantized tokens: ``transcribe_tokens(tokenize(...))`` in one
        call (the quantizer counts the codes in ``usage``)."""
        log_probs, lengths, _ = self(audio, audio_lengths)
        return self.greedy_decode(log_probs, lengths)

    def greedy_decode(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        texts = []
        for row, n in zip(logits.argmax(-1), lengths.tolist()):
            ids = torch.unique_consecutive(row[:n]).tolist()
            texts.append(self.text_units.ids_to_text([i for i in ids if i != self.blank]))
        return texts

    # ------------------------------------------------------------------ training

    def _loss(self, batch):
        audio, audio_lengths, targets, target_lengths = batch[:4]
        log_probs, lengths, vq = self(audio, audio_lengths)
        ctc = self.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths)
        return ctc, vq, log_probs, lengths

    def training_step(self, batch, batch_idx):
        ctc, vq, _, _ = self._loss(batch)
        loss = ctc + vq.commitment_loss
        self.log_dict({"train_loss": loss, "ctc": ctc, "commit": vq.commitment_loss, "perplexity": vq.perplexity,
                       "restarted": float(vq.restarted)}, prog_bar=True, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        from nemo.collections.asr.metrics.wer import word_error_rate

        ctc, vq, log_probs, lengths = self._loss(batch)
        targets, target_lengths = batch[2], batch[3]
        hyps = self.greedy_decode(log_probs, lengths)
        refs = [self.text_units.ids_to_text(t[:n].tolist()) for t, n in zip(targets, target_lengths.tolist())]
        output = {"val_loss": ctc.detach(), "wer": word_error_rate(hyps, refs), "set": dataloader_idx}
        self.validation_step_outputs.append(output)
        return output

    def on_validation_epoch_end(self):
        log_validation(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_history(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_history(self, checkpoint)

    # ------------------------------------------------------------------ data (NeMo's Lhotse loader)

    def setup_training_data(self, cfg: DictConfig) -> None:
        self._train_dl = training_loader(cfg, self, self.text_units) if cfg and cfg.get("manifest_filepath") else None

    def setup_validation_data(self, cfg: DictConfig) -> None:
        self._validation_dl, self.validation_set_names = validation_loaders(cfg, self, self.text_units)

    @classmethod
    def list_available_models(cls):
        return None  # nothing is downloaded: models are trained by the recipe


class _Characters:
    """NeMo's character parser plus what the model asks of any text units: ``vocab_size`` and
    ``ids_to_text``. NeMo's Lhotse dataset calls it like the parser (``units(text) -> ids``)."""

    def __init__(self, labels: list[str], parser) -> None:
        self.labels, self._parser = labels, parser
        self.vocab_size = len(labels)

    def __call__(self, text: str) -> list[int]:
        return self._parser(text)

    def ids_to_text(self, ids: list[int]) -> str:
        return "".join(self.labels[i] for i in ids)
