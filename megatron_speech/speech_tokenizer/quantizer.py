"""The speech tokenizer's bottleneck: a vector quantizer with EMA codebook updates and dead-code restarts.

The codebook is not trained by gradients. Each code moves towards the mean of the encoder frames
assigned to it (an exponential moving average), which is steadier than a codebook loss. Encoder
frames are pulled towards their code by a commitment loss, and gradients pass the discrete choice
unchanged (straight-through). A code that stops being chosen would be dead weight in the LM's
vocabulary, so codes whose running usage falls below a threshold are restarted at frames drawn from
the current batch. The goal is to keep most of the codebook in use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, T, D], straight-through
    codes: torch.Tensor  # [B, T] int64
    commitment_loss: torch.Tensor  # scalar
    perplexity: torch.Tensor  # exp(entropy) of this batch's code distribution
    restarted: int  # dead codes restarted in this call


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code distribution given by ``counts``: the number of codes "in use"."""
    probs = counts / counts.sum().clamp_min(1)
    return torch.exp(-(probs * torch.log(probs + 1e-10)).sum())


class VectorQuantizerEMA(nn.Module):
    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, commitment_weight: float = 0.25,
                 dead_code_threshold: float = 0.1, epsilon: float = 1e-5, normalize: bool = False,
                 restart_interval: int | None = 1, near_miss: float = 0.0) -> None:
        """``normalize``: quantize unit vectors (cosine distance). The encoder's output scale then
        cannot drift away from the codebook, which otherwise lets one code win every frame early on.
        ``restart_interval``: restart dead codes every this many updates (GLM-4-Voice's
        ``quantize_restart_interval``); None never restarts. ``near_miss``: in training, this share
        of the frames passes its second-nearest code upward (the codebook, the commitment loss and
        the returned codes keep the nearest), so the layers above learn to read a frame that lands
        one code off, as an unheard voice's frames do."""
        super().__init__()
        if not 0.0 <= near_miss < 1.0:
            raise ValueError(f"near_miss must be in [0, 1), got {near_miss}")
        self.near_miss = near_miss
        self.restart_interval, self._updates = restart_interval, 0  # mirrored in the buffer ``updates``
        self.normalize = normalize
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.commitment_weight = decay, commitment_weight
        self.dead_code_threshold, self.epsilon = dead_code_threshold, epsilon
        codebook = torch.randn(num_codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("usage", torch.zeros(num_codes))  # codes chosen since reset_usage()
        self.register_buffer("initialized", torch.tensor(False))
        # codebook updates so far, in the state: restarts keep their cadence across a resume
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        updates = state_dict.setdefault(prefix + "updates", torch.zeros((), dtype=torch.long))  # older: none
        self._updates = int(updates)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_usage(self) -> None:
        self.usage.zero_()

    def codebook_usage(self) -> float:
        """Fraction of codes chosen at least once since ``reset_usage``."""
        return (self.usage > 0).float().mean().item()

    def nearest(self, x: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Index of the nearest code (Euclidean) for each row of ``x`` [N, D]; with ``k`` > 1, the
        ``k`` nearest, nearest first [N, k]."""
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        distances = (x.pow(2).sum(1, keepdim=True) - 2 * x @ self.codebook.T + self.codebook.pow(2).sum(1))
        return distances.argmin(dim=1) if k == 1 else distances.topk(k, dim=1, largest=False).indices

    @torch.no_grad()
    def squared_errors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row of ``x`` [N, D]: its squared distance to the nearest code and its squared norm, in
        the space the codes are compared in (unit vectors with ``normalize``): their ratio, summed over
        a voice, says how much of its frames the tokens lose."""
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        nearest = self.codebook[self.nearest(x)]
        return (x - nearest).pow(2).sum(1), x.pow(2).sum(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x`` [B, T, D]; ``mask`` [B, T] marks real (non-padding) frames."""
        b, t, d = x.shape
        if self.normalize:
            x = nn.functional.normalize(x, dim=-1)
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        flat = x.reshape(-1, d).float()
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach()[mask.reshape(-1)])
        valid = mask.reshape(-1)
        passed = None  # the codes the layers above read, where they differ from the nearest
        if self.training and self.near_miss > 0:
            two = self.nearest(flat.detach(), k=2)
            codes = two[:, 0]
            swap = (torch.rand(codes.shape, device=codes.device) < self.near_miss) & valid
            passed = torch.where(swap, two[:, 1], codes)
        else:
            codes = self.nearest(flat.detach())
        onehot = nn.functional.one_hot(codes, self.num_codes).float() * valid[:, None]
        counts = onehot.sum(0)
        restarted = 0
        if self.training:
            restarted = self._update(flat.detach(), onehot, counts, valid)
        self.usage += counts.detach()
        quantized = self.codebook[codes].view(b, t, d)
        diff = (x.float() - quantized.detach()).pow(2).mean(-1)
        commitment = self.commitment_weight * (diff * mask).sum() / mask.sum().clamp_min(1)
        if passed is not None:
            quantized = self.codebook[passed].view(b, t, d)
        quantized = x + (quantized - x).detach()  # straight-through
        return QuantizerOutput(quantized.to(x.dtype), codes.view(b, t), commitment, perplexity(counts), restarted)

    @torch.no_grad()
    def _init_from(self, frames: torch.Tensor) -> None:
        """Start the codebook at encoder frames of the first batch, where the data is."""
        picks = torch.randint(0, frames.shape[0], (self.num_codes,), device=frames.device)
        fresh = frames[picks] + 1e-3 * torch.randn(self.num_codes, self.dim, device=frames.device)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebook.copy_(fresh)
        self.embed_sum.copy_(fresh)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor) -> int:
        counts = _all_reduce(counts.clone())
        sums = _all_reduce(onehot.T @ flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        codebook = self.embed_sum / smoothed[:, None]
        self.codebook.copy_(nn.functional.normalize(codebook, dim=-1) if self.normalize else codebook)
        self._updates += 1
        self.updates.fill_(self._updates)  # from the Python count: reading the buffer would wait for a GPU
        if self.restart_interval is None or self._updates % self.restart_interval:
            return 0
        return self._restart_dead_codes(flat[valid])

    def _restart_dead_codes(self, frames: torch.Tensor) -> int:
        dead = (self.cluster_size < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0 or frames.shape[0] == 0:
            return 0
        picks = torch.randint(0, frames.shape[0], (dead.numel(),), device=frames.device)
        fresh = frames[picks]
        if _distributed():
            dist.broadcast(fresh, src=0)  # every replica restarts to the same frames
        self.codebook[dead] = fresh
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
        return int(dead.numel())
