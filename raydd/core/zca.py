"""Regularised ZCA whitening fitted on training images (as Kornia's ZCA in the MTT code)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def _mean_and_covariance(chunks: Callable[[], Iterable[Tensor]]) -> tuple[Tensor, Tensor]:
    """Float64 feature mean and unbiased covariance of the rows of ``chunks()`` (called twice: one pass each)."""
    total, n = None, 0
    for rows in chunks():
        total = rows.flatten(1).sum(0, dtype=torch.float64) + (0 if total is None else total)
        n += rows.shape[0]
    mean = total / n
    cov = torch.zeros(mean.numel(), mean.numel(), dtype=torch.float64, device=mean.device)
    for rows in chunks():
        centred = rows.flatten(1).double() - mean
        cov.addmm_(centred.T, centred)
    return mean, cov / (n - 1)


@dataclass
class ZCA:
    """``transform(x) = (flat(x) - mean) @ whiten``; ``inverse`` undoes it.

    ``whiten = U (S + reg)^-1/2 Uᵀ`` and ``unwhiten = U (S + reg)^1/2 Uᵀ`` from the
    eigen-decomposition ``U S Uᵀ`` of the training covariance.
    """

    mean: Tensor
    whiten: Tensor
    unwhiten: Tensor
    reg: float

    @classmethod
    def fit(cls, x: Tensor, reg: float = 0.1) -> ZCA:
        """Fit on N×C×H×W float images (computed in float64, stored float32)."""
        return cls.fit_batches(lambda: x.split(4096), reg)

    @classmethod
    def fit_batches(cls, batches: Callable[[], Iterable[Tensor]], reg: float = 0.1) -> ZCA:
        """Fit on the float images of ``batches()``, a pass that can be made twice (e.g. a streamed split)."""
        mean, cov = _mean_and_covariance(batches)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        shifted = eigvals.clamp(min=0) + reg
        whiten = (eigvecs * shifted.rsqrt()) @ eigvecs.T
        unwhiten = (eigvecs * shifted.sqrt()) @ eigvecs.T
        return cls(mean.float(), whiten.float(), unwhiten.float(), reg)

    def transform(self, x: Tensor) -> Tensor:
        """Whiten a batch of images; differentiable and shape-preserving."""
        return ((x.flatten(1) - self.mean) @ self.whiten).view_as(x)

    def inverse(self, x: Tensor) -> Tensor:
        """Map whitened images back to the input space."""
        return (x.flatten(1) @ self.unwhiten + self.mean).view_as(x)

    def to(self, device: torch.device | str) -> ZCA:
        """A copy with its tensors on ``device``."""
        return ZCA(self.mean.to(device), self.whiten.to(device), self.unwhiten.to(device), self.reg)

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat tensor dict (CPU, contiguous) for safetensors; ``reg`` as a float64 scalar."""
        return {
            "mean": self.mean.detach().cpu().contiguous(),
            "whiten": self.whiten.detach().cpu().contiguous(),
            "unwhiten": self.unwhiten.detach().cpu().contiguous(),
            "reg": torch.tensor(self.reg, dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, d: dict[str, Tensor]) -> ZCA:
        """Inverse of :meth:`to_tensors`."""
        return cls(d["mean"], d["whiten"], d["unwhiten"], float(d["reg"]))

    def save(self, path: str | Path) -> None:
        """Write to a local safetensors file."""
        save_file(self.to_tensors(), str(path))

    @classmethod
    def load(cls, path: str | Path) -> ZCA:
        """Read a file written by :meth:`save`."""
        return cls.from_tensors(load_file(str(path)))
