"""Turn a text LM's weights into the speech GPT's: same text rows, new rows for speech tokens.

Rule for the new rows (audio codes and special tokens), in the input embedding and, if untied, the
output layer: draw them from a Gaussian with the mean and covariance of the text rows (Hewitt,
"Initializing New Word Embeddings for Pretrained Language Models", 2021). Zero or tiny random rows
would give new tokens logits far from the text distribution, so early steps spend their gradient
pulling them into range; rows drawn from the text rows' distribution start where text tokens are,
and because the text rows are copied unchanged, the expanded model's text-token logits equal the
original's exactly.

Rows the text checkpoint kept past its tokenizer (Hugging Face checkpoints often pad) are dropped:
the speech vocabulary places audio ids right after the text tokenizer's last id.
"""

from __future__ import annotations

import torch

VOCAB_MATRICES = ("embedding.word_embeddings.weight", "output_layer.weight")


def sample_like_rows(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows drawn from N(mean, cov) of ``rows`` (computed in float64)."""
    x = rows.to(torch.float64)
    mean = x.mean(dim=0)
    centered = x - mean
    cov = centered.T @ centered / max(x.shape[0] - 1, 1)
    # A covariance from fewer rows than dimensions is singular; a small ridge keeps Cholesky valid.
    ridge = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)
    chol = torch.linalg.cholesky(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
    z = torch.randn(count, x.shape[1], generator=generator, dtype=torch.float64)
    return (mean + z @ chol.T).to(rows.dtype)


def expand_vocabulary(
    text_state: dict[str, torch.Tensor],
    text_vocab_size: int,
    vocab_size: int,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A full (canonical) state dict of the speech GPT from a text LM's full state dict.

    ``text_vocab_size`` is the text tokenizer's size (the speech vocabulary's audio offset);
    ``vocab_size`` the speech-text tokenizer's size. Other weights are shared, not copied.
    """
    if vocab_size < text_vocab_size:
        raise ValueError(f"new vocabulary ({vocab_size}) is smaller than the text one ({text_vocab_size})")
    generator = torch.Generator().manual_seed(seed)
    expanded = dict(text_state)
    for key in VOCAB_MATRICES:
        if key not in text_state:
            continue  # output layer absent: embeddings are tied
        matrix = text_state[key]
        if matrix.shape[0] < text_vocab_size:
            raise ValueError(
                f"{key} has {matrix.shape[0]} rows but the text tokenizer has {text_vocab_size} ids"
            )
        text_rows = matrix[:text_vocab_size]
        new_rows = sample_like_rows(text_rows, vocab_size - text_vocab_size, generator)
        expanded[key] = torch.cat([text_rows, new_rows])
    return expanded
