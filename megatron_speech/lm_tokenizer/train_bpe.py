"""Train the small byte-level BPE text tokenizer the built-in default recipe uses.

Real runs start from a pre-trained text LM and use its tokenizer; the default recipe has no hub to
download one from, so it trains a small one (the same family as GPT-2/Llama-3/Qwen2: byte-level, so
every string round-trips exactly) on the recipe's own corpus.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron_speech.lm_tokenizer.speech_text_tokenizer import END_OF_TEXT


def train_bpe(texts: Iterable[str], vocab_size: int, output: str | Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tokenizer.save(str(tmp))
    tmp.replace(output)
    return tokenizer
