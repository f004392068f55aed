"""Megatron training checkpoints (any TP/PP) <-> Hugging Face checkpoints, in one process.

``dist_checkpointing`` reshards on load, so conversion loads any layout into a TP=1, PP=1 model on a
single (gloo) process, gathers the canonical full state dict and maps its names. The tokenizer goes
with the weights: an HF ``tokenizer.json`` holding every audio and special token at its id, plus the
project's own ``speech_text_tokenizer.json`` so the HF folder converts back without loss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from megatron_speech import parallel as par
from megatron_speech.convert.hf import (
    from_hf_state_dict,
    hf_config_from_model,
    model_config_from_hf,
    read_hf_checkpoint,
    to_hf_state_dict,
    with_speech_vocabulary,
    write_hf_checkpoint,
)
from megatron_speech.models.config import SpeechGPTConfig
from megatron_speech.models.gpt import build_model
from megatron_speech.models.sharding import gather_full_state_dict, load_full_state_dict
from megatron_speech.tokenizer import SpeechTextTokenizer
from megatron_speech.training import checkpoint
from megatron_speech.training.init import run_metadata


def _single_process() -> None:
    if not os.environ.get("WORLD_SIZE"):
        from megatron_speech.testing.multiprocess import free_port

        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    par.init_distributed(par.ParallelConfig())


def megatron_to_hf(checkpoint_root: str | Path, tokenizer_dir: str | Path, output: str | Path,
                   step: int | None = None, dtype: str | None = None) -> Path:
    """Write checkpoint ``step`` (default: the newest) of ``checkpoint_root`` as an HF model folder."""
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    info = checkpoint.read_info(checkpoint_root, step)
    if info is None:
        raise checkpoint.CheckpointError(f"{checkpoint_root}: no checkpoint ('latest' is missing)")
    config = SpeechGPTConfig.from_dict(info.metadata["model"])
    checkpoint.check_compatible(info, run_metadata(config, tokenizer))
    _single_process()
    try:
        model = build_model(config, tokenizer.vocab_size, par.ParallelConfig())
        checkpoint.load(info, [model])
        full = gather_full_state_dict(model)
    finally:
        par.shutdown()
    hf_config = hf_config_from_model(config, tokenizer.vocab_size, _special_ids(tokenizer))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype or config.params_dtype]
    hf_config["torch_dtype"] = dtype or config.params_dtype
    write_hf_checkpoint(output, hf_config, to_hf_state_dict(full, config), dtype=torch_dtype)
    save_hf_tokenizer(tokenizer, output)
    return Path(output)


def hf_to_megatron(hf_dir: str | Path, tokenizer_dir: str | Path, output_root: str | Path,
                   expand_seed: int = 0) -> Path:
    """A weights-only Megatron checkpoint (step 0) of an HF model.

    A speech GPT (as written by ``megatron_to_hf``) converts as is; a text LM whose embeddings cover
    only the tokenizer's text part gets the speech rows added by the vocabulary-expansion rule.
    """
    tokenizer = SpeechTextTokenizer.load(tokenizer_dir)
    hf_config, tensors = read_hf_checkpoint(hf_dir)
    config = model_config_from_hf(hf_config, f"{hf_dir}/config.json")
    full = with_speech_vocabulary(from_hf_state_dict(tensors, config, str(hf_dir)), tokenizer, expand_seed, hf_dir)
    _single_process()
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
    tokenizer.to_hf_tokenizer().save(str(output / "tokenizer.json"))
    names = {i: n for n, i in tokenizer.special_ids.items()}
    hf_tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": names.get(tokenizer.eod),
        "pad_token": names.get(tokenizer.pad),
        "model_max_length": 1 << 30,
        "clean_up_tokenization_spaces": False,
    }
    (output / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer_config, indent=2) + "\n")
    tokenizer.save(output / "speech_text_tokenizer")
