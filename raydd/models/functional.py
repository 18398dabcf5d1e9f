"""A network as one flat parameter vector: what trajectories store and the inner loop differentiates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a module's parameters, in ``named_parameters`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each parameter's element count: the per-layer split of the flat vector."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def to_json(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]

    @classmethod
    def from_json(cls, data: list[list]) -> ParamLayout:
        return cls(tuple(n for n, _ in data), tuple(tuple(s) for _, s in data))

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat`` shaped like each parameter (differentiable)."""
        return {n: t.view(s) for n, s, t in zip(self.names, self.shapes, flat.split(self.sizes))}


def flatten_params(module: nn.Module) -> Tensor:
    """A detached copy of the module's parameters as one float32 vector (a snapshot, never a view)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).float().clone()


def load_flat(module: nn.Module, flat: Tensor) -> nn.Module:
    """Copy a flat vector into the module's parameters in place."""
    layout = ParamLayout.of(module)
    if flat.numel() != layout.numel:
        raise ValueError(f"flat vector has {flat.numel()} values, module needs {layout.numel}")
    with torch.no_grad():
        for p, v in zip(module.parameters(), layout.unflatten(flat).values()):
            p.copy_(v)
    return module


class FlatModel:
    """Call ``module`` with parameters taken from a flat vector: ``FlatModel(m)(flat, x)``.

    ``channels_last`` lays out images and 4-d weights as NHWC for the convolutions (oneDNN on
    CPU, cuDNN on GPU run faster on it); the values, and so the math, are unchanged.
    """

    def __init__(self, module: nn.Module, channels_last: bool = False) -> None:
        self.module = module
        self.layout = ParamLayout.of(module)
        self.buffers = dict(module.named_buffers())
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        params = {n: t.contiguous(memory_format=self.format) if t.dim() == 4 else t
                  for n, t in self.layout.unflatten(flat).items()}
        return functional_call(self.module, {**params, **self.buffers}, (x.contiguous(memory_format=self.format),))
