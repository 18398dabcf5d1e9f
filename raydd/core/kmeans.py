"""k-means on tensors: k-means++ seeding, Lloyd iterations and a mini-batch variant.

Every function works on an ``N×D`` float tensor and a seeded ``torch.Generator``; distances
are computed ``chunk`` rows at a time, so memory beyond the data is ``chunk×k``. The result
of every variant is a *partition* with its means: ``centers[j]`` is the mean of the points
assigned to ``j``, ``counts[j]`` their number (the optimal-quantization mass) and
``objective`` the sum of squared distances of the points to their centers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

CHUNK = 4096


@dataclass
class KMeansResult:
    centers: Tensor                 # k×D
    counts: Tensor                  # k int64, sums to N
    assign: Tensor                  # N int64: the cluster of each point
    objective: float                # Σ‖x − c(x)‖² of the partition
    iterations: int
    history: list[float] = field(default_factory=list)  # partition objective after each iteration


@dataclass(frozen=True)
class KMeansSettings:
    max_iters: int = 100
    tol: float = 1e-6               # Lloyd: relative objective decrease; mini-batch: relative center shift
    batch_size: int | None = None   # mini-batch k-means when N exceeds this
    restarts: int = 1               # keep the best of this many seeded runs (Lloyd)


def nearest(x: Tensor, centers: Tensor, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """Index of, and squared distance to, the nearest center of every row of ``x``."""
    c2 = centers.square().sum(1)
    index, dist = [], []
    for start in range(0, x.shape[0], chunk):
        xs = x[start:start + chunk]
        d = torch.addmm(c2.unsqueeze(0), xs, centers.T, alpha=-2).add_(xs.square().sum(1, keepdim=True)).clamp_(min=0)
        best, arg = d.min(1)
        index.append(arg)
        dist.append(best)
    return torch.cat(index), torch.cat(dist)


def kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each new center is a data point drawn with probability ∝ D(x)²."""
    n = x.shape[0]
    sq = x.square().sum(1)
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    d2 = (sq - 2 * (x @ x[chosen[0]]) + sq[chosen[0]]).clamp_(min=0)
    for _ in range(1, k):
        weights = d2.double()
        if weights.sum() <= 0:  # fewer distinct points than k: any point will do
            weights = torch.ones_like(weights)
        chosen.append(int(torch.multinomial(weights.cpu(), 1, generator=gen)))  # the generator is on the CPU
        d2 = torch.minimum(d2, (sq - 2 * (x @ x[chosen[-1]]) + sq[chosen[-1]]).clamp_(min=0))
    return x[chosen]


def partition_stats(x: Tensor, assign: Tensor, k: int, sq_total: float | None = None) -> tuple[Tensor, Tensor, float]:
    """Means (empty clusters: NaN rows), counts and objective of the partition ``assign``.

    The objective is Σ‖x‖² − Σ_j ‖S_j‖²/n_j (S_j: the sum of cluster j) in float64;
    ``sq_total`` (Σ‖x‖²) may be passed when it is known.
    """
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, x)
    if sq_total is None:
        sq_total = float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)
    nonempty = counts > 0
    between = (sums[nonempty].double().square().sum(1) / counts[nonempty]).sum()
    return sums / counts.unsqueeze(1), counts, max(0.0, sq_total - float(between))


def _fill_empty(assign: Tensor, dist: Tensor, k: int) -> Tensor:
    """Give each empty cluster the point farthest from its center among clusters of two or more.

    Moving a point into its own cluster drops its cost to zero, so the objective cannot rise.
    """
    counts = torch.bincount(assign, minlength=k)
    assign, dist = assign.clone(), dist.clone()
    for j in (counts == 0).nonzero().flatten().tolist():
        candidates = torch.where(counts[assign] > 1, dist, torch.full_like(dist, -1.0))
        i = int(candidates.argmax())
        if candidates[i] <= 0:
            break
        counts[assign[i]] -= 1
        counts[j] += 1
        assign[i], dist[i] = j, 0.0
    return assign


def lloyd(x: Tensor, k: int, gen: torch.Generator, max_iters: int = 100, tol: float = 1e-6) -> KMeansResult:
    """k-means++ then Lloyd iterations until the assignment stops changing, the objective
    decreases by less than ``tol`` (relative), or ``max_iters``."""
    centers = kmeans_pp(x, k, gen)
    sq_total = float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)
    previous: Tensor | None = None
    history: list[float] = []
    for _ in range(max_iters):
        assign, dist = nearest(x, centers)
        assign = _fill_empty(assign, dist, k)
        means, counts, objective = partition_stats(x, assign, k, sq_total)
        centers = torch.where(counts.unsqueeze(1) > 0, means, centers)
        history.append(objective)
        if previous is not None and torch.equal(assign, previous):
            break
        if len(history) > 1 and history[-2] - objective <= tol * history[-2]:
            break
        previous = assign
    return KMeansResult(centers, counts, assign, history[-1], len(history), history)


def minibatch(x: Tensor, k: int, gen: torch.Generator, batch_size: int, max_iters: int = 100,
              tol: float = 1e-6) -> KMeansResult:
    """Mini-batch k-means (Sculley 2010): each step moves the centers of a random batch's points
    toward them with per-center rate 1/count; stops when the centers move less than ``tol``
    (relative squared shift) or after ``max_iters`` steps. A final pass over all points (in
    chunks) sets each center to the mean of the points nearest to it (empty clusters refilled)."""
    centers = kmeans_pp(x, k, gen)
    seen = torch.zeros(k, dtype=x.dtype, device=x.device)
    steps = 0
    for steps in range(1, max_iters + 1):
        batch = x[torch.randint(x.shape[0], (batch_size,), generator=gen).to(x.device)]
        assign, _ = nearest(batch, centers)
        m = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, assign, batch)
        seen += m
        hit = m > 0
        old = centers.clone()
        centers[hit] += (sums[hit] - m[hit].unsqueeze(1) * centers[hit]) / seen[hit].unsqueeze(1)
        if (centers - old).square().sum() <= tol * old.square().sum():
            break
    assign, dist = nearest(x, centers)
    assign = _fill_empty(assign, dist, k)
    means, counts, objective = partition_stats(x, assign, k)
    centers = torch.where(counts.unsqueeze(1) > 0, means, centers)
    return KMeansResult(centers, counts, assign, objective, steps, [objective])


def medoids(x: Tensor, assign: Tensor, centers: Tensor) -> Tensor:
    """Index of the member of each cluster nearest its center (-1 for an empty cluster)."""
    dist = torch.cat([(x[s:s + CHUNK] - centers[assign[s:s + CHUNK]]).square().sum(1) for s in range(0, x.shape[0], CHUNK)])
    out = torch.full((centers.shape[0],), -1, dtype=torch.long, device=x.device)
    for j in range(centers.shape[0]):
        members = (assign == j).nonzero().flatten()
        if members.numel():
            out[j] = members[dist[members].argmin()]
    return out


def kmeans(x: Tensor, k: int, gen: torch.Generator, settings: KMeansSettings = KMeansSettings()) -> KMeansResult:
    """Lloyd (best of ``restarts``), or mini-batch k-means when ``x`` has more than ``batch_size`` rows."""
    if not 0 < k <= x.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of points ({x.shape[0]})")
    if settings.batch_size is not None and x.shape[0] > settings.batch_size:
        return minibatch(x, k, gen, settings.batch_size, settings.max_iters, settings.tol)
    runs = [lloyd(x, k, gen, settings.max_iters, settings.tol) for _ in range(max(1, settings.restarts))]
    return min(runs, key=lambda r: r.objective)
