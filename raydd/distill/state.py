"""A worker's shard of the synthetic set and its optimisers; checkpointed per rank with safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from raydd.specs import DistillSpec

@dataclass
class ShardState:
    index: Tensor            # positions of this shard's images in the whole set
    images: Tensor           # learnable (leaf)
    labels: Tensor
    soft: Tensor | None      # learnable soft-label logits (DATM)
    lr_param: Tensor         # learnable inner lr (replicated on every worker): the lr itself, or its log
    ema: Tensor | None       # EMA of the images (DATM)
    log_lr: bool = False     # ``lr_param`` is log(lr): the lr stays positive by construction
    iteration: int = 0

    def leaves(self) -> list[Tensor]:
        return [self.images, self.lr_param, *([self.soft] if self.soft is not None else [])]

    @property
    def lr(self) -> Tensor:
        """The inner learning rate (detached)."""
        return self.lr_param.detach().exp() if self.log_lr else self.lr_param.detach()

    def set_lr(self, lr: Tensor) -> None:
        with torch.no_grad():
            self.lr_param.copy_(lr.log() if self.log_lr else lr)

    def bound_lr(self, before: float, factor: float) -> None:
        """Keep the lr within [before / factor, before · factor] (a step that moved it further is cut back)."""
        self.set_lr(self.lr.clamp(before / factor, before * factor))

    def set_lr_grad(self, lr_grad: Tensor) -> None:
        """Store ∂loss/∂lr as the gradient of the lr parameter (chain rule through the log)."""
        self.lr_param.grad = lr_grad * self.lr if self.log_lr else lr_grad


def new_state(index: Tensor, images: Tensor, labels: Tensor, soft: Tensor | None, d: DistillSpec,
              device: torch.device) -> ShardState:
    """A fresh shard on ``device`` with the configured initial lr and parameterisation."""
    log_lr = d.lr_param == "log"
    lr = torch.tensor(float(d.lr_init), device=device)
    return ShardState(index, images.to(device).requires_grad_(True), labels.to(device),
                      None if soft is None else soft.to(device).requires_grad_(True),
                      (lr.log() if log_lr else lr).requires_grad_(True),
                      images.detach().clone().to(device) if d.ema else None, log_lr)


def lr_of_lr(d: DistillSpec) -> float:
    """The lr's own learning rate; for log(lr), scaled so the first step moves the lr as far as plain SGD would."""
    return d.lr_lr / d.lr_init ** 2 if d.lr_param == "log" else d.lr_lr


def make_optimizers(state: ShardState, d: DistillSpec) -> dict[str, torch.optim.Optimizer]:
    opts = {"images": torch.optim.SGD([state.images], lr=d.lr_img, momentum=d.momentum_img),
            "lr": torch.optim.SGD([state.lr_param], lr=lr_of_lr(d), momentum=0.5)}
    if state.soft is not None:
        opts["soft"] = torch.optim.SGD([state.soft], lr=d.lr_label, momentum=0.9)
    return opts


def _opt_tensors(name: str, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    return {f"opt.{name}.{i}": s["momentum_buffer"] for i, s in enumerate(opt.state.values()) if s.get("momentum_buffer") is not None}


def save_shard(path: Path, rank: int, state: ShardState, opts: dict[str, torch.optim.Optimizer],
               gen: torch.Generator, extra: dict[str, Any]) -> None:
    tensors = {"index": state.index, "images": state.images.detach(), "labels": state.labels,
               "lr": state.lr.clone().reshape(1), "lr_param": state.lr_param.detach().reshape(1), "rng": gen.get_state()}
    if state.soft is not None:
        tensors["soft"] = state.soft.detach()
    if state.ema is not None:
        tensors["ema"] = state.ema
    for name, opt in opts.items():
        tensors |= _opt_tensors(name, opt)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / f"rank{rank}.safetensors"))
    info = {"iteration": state.iteration, "lr_of_lr": opts["lr"].param_groups[0]["lr"], **extra}
    (path / f"rank{rank}.json").write_text(json.dumps(info))


def load_shard(path: Path, rank: int, d: DistillSpec, device: torch.device
               ) -> tuple[ShardState, dict[str, torch.optim.Optimizer], torch.Generator, dict]:
    t = load_file(str(path / f"rank{rank}.safetensors"))
    info = json.loads((path / f"rank{rank}.json").read_text())
    on = {k: v.to(device) for k, v in t.items() if k != "rng"}
    state = ShardState(t["index"], on["images"].requires_grad_(True), on["labels"],
                       on["soft"].requires_grad_(True) if "soft" in on else None,
                       on["lr_param"][0].clone().requires_grad_(True), on.get("ema"), d.lr_param == "log",
                       info["iteration"])
    opts = make_optimizers(state, d)
    opts["lr"].param_groups[0]["lr"] = info["lr_of_lr"]
    for name, opt in opts.items():
        buf = on.get(f"opt.{name}.0")
        if buf is not None:
            opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"] = buf
    gen = torch.Generator()
    gen.set_state(t["rng"])
    return state, opts, gen, info


def load_all_shards(path: Path) -> list[dict[str, Tensor]]:
    """Every rank's tensors from a checkpoint directory, in rank order."""
    files = sorted(path.glob("rank*.safetensors"), key=lambda p: int(p.stem[4:]))
    return [load_file(str(f)) for f in files]
