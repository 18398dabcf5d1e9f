"""One outer iteration of trajectory matching on a worker's shard, with guards and rollback."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raydd.distill.guards import Guard
from raydd.distill.sampling import Segment
from raydd.distill.sharding import ShardMap, plan_steps
from raydd.distill.state import ShardState
from raydd.distill.unroll import Reduce, Targets, UnrollSpec, unroll
from raydd.models.functional import FlatModel
from raydd.specs import DistillSpec


@dataclass
class StepResult:
    loss: float
    applied: bool
    reason: str | None


def filter_perturbation(w: Tensor, noise: Tensor, alpha: float) -> Tensor:
    """AST's code (``weightPerturb``): w + α·(d / ‖d‖_F)⊙w, the noise d normalised over the whole tensor."""
    return w + alpha * noise / noise.norm() * w


def rms_perturbation(t: Tensor, noise: Tensor, scale: float) -> Tensor:
    """raydd's: t + scale·RMS(t)·d, Gaussian noise in units of the parameter's root mean square."""
    return t + scale * t.pow(2).mean().sqrt() * noise


def perturb(theta: Tensor, layout, d: DistillSpec, gen: torch.Generator) -> Tensor:
    """AST's weight perturbation of the student's start (``distill.perturb``; 0: none).

    ``filter`` (AST's code): only the 4-D (convolution) weights, each by ``filter_perturbation`` with
    α = ``perturb``; ``rms``: every parameter by ``rms_perturbation`` with ``perturb`` as the scale.
    """
    if d.perturb <= 0:
        return theta
    parts = []
    for t in layout.unflatten(theta).values():
        if d.perturb_mode == "filter" and t.dim() != 4:
            parts.append(t.reshape(-1))
            continue
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
        moved = filter_perturbation(t, noise, d.perturb) if d.perturb_mode == "filter" else \
            rms_perturbation(t, noise, d.perturb)
        parts.append(moved.reshape(-1))
    return torch.cat(parts)


def student_start(expert_start: Tensor, layout, d: DistillSpec, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The student's (perturbed) start and the start the matching loss normalises by: the perturbed one
    for ``perturb_mode=filter`` (AST's code), the expert's own for ``rms`` (raydd's)."""
    start = perturb(expert_start, layout, d, gen)
    return start, start if d.perturb_mode == "filter" else expert_start


def unroll_spec(d: DistillSpec) -> UnrollSpec:
    """The inner loop's settings: student momentum, DSA (strategy), soft-label temperature, graphs kept."""
    return UnrollSpec(momentum=d.student_momentum, dsa=d.dsa, dsa_strategy=d.dsa_strategy, temperature=d.temperature,
                      kept_graphs=None if d.unroll == "plain" else d.kept_graphs)


def compute_gradients(state: ShardState, shards: ShardMap, labels: Tensor, rank: int, net: FlatModel, start: Tensor,
                      targets: Targets, d: DistillSpec, spec: UnrollSpec, gen: torch.Generator,
                      reduce: Reduce, inner_scale: float = 1.0) -> float:
    """Fill ``.grad`` of the shard's images, the lr (and soft labels); return the matching loss.

    ``labels`` are the whole set's labels: every worker draws the same mini-batches of the whole set.
    ``inner_scale`` multiplies the inner loss (the segment's, AST's balanced inner loss).
    """
    for leaf in state.leaves():
        leaf.grad = None
    plan = plan_steps(labels, shards, rank, d.syn_steps, d.batch_syn, d.balanced_inner_loss == "class", gen, inner_scale)
    result = unroll(net, state.images, state.labels, state.soft, state.lr, start, plan, targets, spec, reduce)
    state.set_lr_grad(result.lr_grad)
    return float(result.loss)


def segment_targets(store, seg: Segment, start: Tensor) -> Targets:
    """The segment's expert targets; ``start`` is what the matching loss normalises by."""
    return Targets(start, seg.target_steps, [store.params(seg.expert, e).to(start.device) for e in seg.target_epochs],
                   seg.weights)


def grads_finite(state: ShardState) -> bool:
    return all(leaf.grad is None or bool(torch.isfinite(leaf.grad).all()) for leaf in state.leaves())


def skip_above_threshold(state: ShardState, opts: dict[str, torch.optim.Optimizer], loss: float, guard: Guard,
                         d: DistillSpec) -> str:
    """DATM's skip of a step whose matching loss is above ``distill.loss_threshold``; the reason.

    An lr too high for every segment makes every later loss exceed the threshold, and DATM's code then skips
    every step to the end. raydd's option ``distill.threshold_patience``: after that many skips in a row, the
    learned lr and its own learning rate are multiplied by ``distill.lr_backoff`` and the lr's momentum dropped.
    """
    guard.skipped += 1
    guard.skipped_in_a_row += 1
    reason = f"loss {loss:.3f} above threshold {d.loss_threshold}"
    if d.threshold_patience is None or guard.skipped_in_a_row < d.threshold_patience:
        return reason
    guard.skipped_in_a_row = 0
    state.set_lr(state.lr * d.lr_backoff)
    opts["lr"].param_groups[0]["lr"] *= d.lr_backoff
    opts["lr"].state.clear()
    return f"{reason}; {d.threshold_patience} in a row: lr backed off to {float(state.lr):.4g}"


def apply_step(state: ShardState, opts: dict[str, torch.optim.Optimizer], loss: float, finite: bool, guard: Guard,
               d: DistillSpec, iteration: int) -> StepResult:
    """Step the optimisers unless a guard or DATM's loss threshold says no; roll back a bad lr, bound a big lr step.

    ``loss`` and ``finite`` must be the same on every worker (all-reduced), so all agree. A step
    rolled back for its lr also backs off the lr's own learning rate (``distill.lr_backoff``),
    so the next step does not repeat the same overshoot.
    """
    reason = guard.check(loss, finite)
    threshold = d.loss_threshold
    if reason is None and threshold is not None and loss > threshold:
        guard.record(None, iteration)
        return StepResult(loss, False, skip_above_threshold(state, opts, loss, guard, d))
    guard.skipped_in_a_row = 0
    if reason is not None:
        guard.record(reason, iteration)
        return StepResult(loss, False, reason)
    backup = [leaf.detach().clone() for leaf in state.leaves()]
    momenta = {k: {p: {n: v.clone() if isinstance(v, Tensor) else v for n, v in s.items()} for p, s in o.state.items()}
               for k, o in opts.items()}
    lr_before = float(state.lr)
    for opt in opts.values():
        opt.step()
    reason = guard.check(loss, True, float(state.lr))
    if reason is not None:  # roll the whole step back: images, lr, labels and optimiser momenta
        with torch.no_grad():
            for leaf, old in zip(state.leaves(), backup):
                leaf.copy_(old)
        for k, opt in opts.items():
            opt.state.clear()
            opt.state.update(momenta[k])
        opts["lr"].param_groups[0]["lr"] *= d.lr_backoff
    elif d.lr_max_step is not None:
        state.bound_lr(lr_before, d.lr_max_step)
    guard.record(reason, iteration)
    if reason is None and state.ema is not None:
        state.ema.mul_(d.ema).add_(state.images.detach(), alpha=1 - d.ema)
    return StepResult(loss, reason is None, reason)
