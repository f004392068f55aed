"""Megatron training checkpoints (any TP/PP) <-> Hugging Face checkpoints, in one process.

``dist_checkpointing`` reshards on load, so conversion loads any layout into a TP=1, PP=1 model on a
single (gloo) process, gathers the canonical full state dict and maps its names. The tokenizer goes
with the weights: an HF ``tokenizer.json`` holding every audio and special token at its id, plus the
project's own ``speech_text_tokenizer.json`` so the HF folder converts back without loss.
"""

from __future__ import annotations

from pathlib import Path

from megatron_speech import atomic
from megatron_speech import parallel as par
from megatron_speech.checkpoints.hf import hf_config_from_model, load_as_speech_gpt, to_hf_state_dict, write_hf_checkpoint
from megatron_speech.models.config import DTYPES
from megatron_speech.models.gpt import build_model
from megatron_speech.models.sharding import gather_full_state_dict, load_full_state_dict
from megatron_speech.lm_tokenizer import SpeechTextTokenizer
from megatron_speech.checkpoints import megatron as checkpoint
from megatron_speech.checkpoints.trained import load_trained_model, run_metadata


def megatron_to_hf(checkpoint_root: str | Path, tokenizer_dir: str | Path, output: str | Path,
                   step: int | None = None, dtype: str | None = None) -> Path:
    """Write checkpoint ``step`` (default: the newest) of ``checkpoint_root`` as an HF model folder."""
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    par.init_distributed(par.ParallelConfig())
    try:
        model, config, _ = load_trained_model(str(checkpoint_root), tokenizer, step)
        full = gather_full_state_dict(model)
    finally:
        par.shutdown()
    dtype = dtype or config.params_dtype
    hf_config = hf_config_from_model(config, tokenizer.vocab_size, _special_ids(tokenizer))
    hf_config["torch_dtype"] = dtype
    write_hf_checkpoint(output, hf_config, to_hf_state_dict(full, config), dtype=DTYPES[dtype])
    save_hf_tokenizer(tokenizer, output)
    return Path(output)


def hf_to_megatron(hf_dir: str | Path, tokenizer_dir: str | Path, output_root: str | Path,
                   expand_seed: int = 0) -> Path:
    """A weights-only Megatron checkpoint (step 0) of an HF model.

    A speech GPT (as written by ``megatron_to_hf``) converts as is; a text LM whose embeddings cover
    only the tokenizer's text part gets the speech rows added by the vocabulary-expansion rule.
    """
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    config, full = load_as_speech_gpt(hf_dir, tokenizer, expand_seed)
    par.init_distributed(par.ParallelConfig())
    try:
        model = build_model(config, tokenizer.vocab_size, par.ParallelConfig())
        load_full_state_dict(model, full)
        path = checkpoint.save(output_root, 0, [model], None, None, run_metadata(config, tokenizer))
    finally:
        par.shutdown()
    return path


def _special_ids(tokenizer: SpeechTextTokenizer) -> dict[str, int]:
    return {"eos_token_id": tokenizer.eod, "pad_token_id": tokenizer.pad, "bos_token_id": None}


def save_hf_tokenizer(tokenizer: SpeechTextTokenizer, output: str | Path) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` for ``AutoTokenizer``, and the project's own files."""
    output = Path(output)
    atomic.write_text(output / "tokenizer.json", tokenizer.to_hf_tokenizer().to_str(pretty=True))
    names = {i: n for n, i in tokenizer.special_ids.items()}
    hf_tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": names.get(tokenizer.eod),
        "pad_token": names.get(tokenizer.pad),
        "model_max_length": 1 << 30,
        "clean_up_tokenization_spaces": False,
    }
    atomic.write_json(output / "tokenizer_config.json", hf_tokenizer_config)
    tokenizer.save(output / "speech_text_tokenizer")
