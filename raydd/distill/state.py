"""A worker's shard of the synthetic set and its optimisers; checkpointed per rank with safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


@dataclass
class ShardState:
    index: Tensor            # positions of this shard's images in the whole set
    images: Tensor           # learnable (leaf)
    labels: Tensor
    soft: Tensor | None      # learnable soft-label logits (DATM)
    lr: Tensor               # learnable inner lr (replicated on every worker)
    ema: Tensor | None       # EMA of the images (DATM)
    iteration: int = 0

    def leaves(self) -> list[Tensor]:
        return [self.images, self.lr, *([self.soft] if self.soft is not None else [])]


def make_optimizers(state: ShardState, d: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
    opts = {"images": torch.optim.SGD([state.images], lr=d["lr_img"], momentum=d["momentum_img"]),
            "lr": torch.optim.SGD([state.lr], lr=d["lr_lr"], momentum=0.5)}
    if state.soft is not None:
        opts["soft"] = torch.optim.SGD([state.soft], lr=d["lr_label"], momentum=0.9)
    return opts


def _opt_tensors(name: str, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    return {f"opt.{name}.{i}": s["momentum_buffer"] for i, s in enumerate(opt.state.values()) if s.get("momentum_buffer") is not None}


def save_shard(path: Path, rank: int, state: ShardState, opts: dict[str, torch.optim.Optimizer],
               gen: torch.Generator, extra: dict[str, Any]) -> None:
    tensors = {"index": state.index, "images": state.images.detach(), "labels": state.labels,
               "lr": state.lr.detach().reshape(1), "rng": gen.get_state()}
    if state.soft is not None:
        tensors["soft"] = state.soft.detach()
    if state.ema is not None:
        tensors["ema"] = state.ema
    for name, opt in opts.items():
        tensors |= _opt_tensors(name, opt)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / f"rank{rank}.safetensors"))
    (path / f"rank{rank}.json").write_text(json.dumps({"iteration": state.iteration, **extra}))


def load_shard(path: Path, rank: int, d: dict[str, Any]) -> tuple[ShardState, dict[str, torch.optim.Optimizer], torch.Generator, dict]:
    t = load_file(str(path / f"rank{rank}.safetensors"))
    info = json.loads((path / f"rank{rank}.json").read_text())
    state = ShardState(t["index"], t["images"].requires_grad_(True), t["labels"],
                       t["soft"].requires_grad_(True) if "soft" in t else None,
                       t["lr"][0].clone().requires_grad_(True), t.get("ema"), info["iteration"])
    opts = make_optimizers(state, d)
    for name, opt in opts.items():
        buf = t.get(f"opt.{name}.0")
        if buf is not None:
            opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"] = buf
    gen = torch.Generator()
    gen.set_state(t["rng"])
    return state, opts, gen, info


def load_all_shards(path: Path) -> list[dict[str, Tensor]]:
    """Every rank's tensors from a checkpoint directory, in rank order."""
    files = sorted(path.glob("rank*.safetensors"), key=lambda p: int(p.stem[4:]))
    return [load_file(str(f)) for f in files]
