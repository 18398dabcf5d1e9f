import itertools

import pytest
import torch

from raydd.core.kmeans import (KMeansSettings, kmeans, kmeans_pp, lloyd, medoids, minibatch, nearest,
                                   partition_stats)


def _blobs(n: int = 600, k: int = 6, d: int = 5, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(k, d, generator=g, dtype=dtype)
    return centers[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=dtype)


def _sse(x: torch.Tensor, assign: torch.Tensor) -> float:
    return sum(float((x[assign == j] - x[assign == j].mean(0)).square().sum()) for j in assign.unique())


@pytest.mark.parametrize("seed", range(4))
def test_lloyd_objective_never_increases(seed):
    x = _blobs(seed=seed)
    result = lloyd(x, 9, torch.Generator().manual_seed(seed), max_iters=100, tol=0.0)
    assert result.iterations > 2
    for before, after in zip(result.history, result.history[1:]):
        assert after <= before * (1 + 1e-12)
    assert result.objective == result.history[-1]
    # the result is a partition with its means: each point is nearest its own center at convergence
    assign, dist = nearest(x, result.centers)
    assert torch.equal(torch.bincount(assign, minlength=9), result.counts)
    assert float(dist.sum()) == pytest.approx(result.objective, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_optimum(seed):
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    best = min(_sse(x, torch.tensor((0, *bits))) for bits in itertools.product((0, 1), repeat=6) if any(bits))
    result = kmeans(x, 2, torch.Generator().manual_seed(seed), KMeansSettings(restarts=10, tol=0.0))
    assert result.objective == pytest.approx(best, rel=1e-9)
    assert int(result.counts.sum()) == 7


def test_partition_stats_are_means_counts_and_sse():
    x = _blobs(n=50)
    assign = torch.arange(50) % 4
    means, counts, objective = partition_stats(x, assign, 4)
    assert counts.tolist() == [13, 13, 12, 12]
    torch.testing.assert_close(means[1], x[assign == 1].mean(0))
    assert objective == pytest.approx(_sse(x, assign), rel=1e-9)


def test_kmeans_pp_picks_distinct_points_and_is_seeded():
    x = torch.cat([torch.zeros(20, 3), torch.ones(20, 3), 5 * torch.ones(20, 3)])
    centers = kmeans_pp(x, 3, torch.Generator().manual_seed(0))
    assert sorted(centers[:, 0].tolist()) == [0.0, 1.0, 5.0]
    torch.testing.assert_close(kmeans_pp(x, 3, torch.Generator().manual_seed(0)), centers)


def test_duplicates_never_leave_a_cluster_empty():
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0], [1.0], [10.0]])
    result = kmeans(x, 3, torch.Generator().manual_seed(0))
    assert (result.counts > 0).all() and int(result.counts.sum()) == 6
    assert result.objective == pytest.approx(0.0, abs=1e-6)


def test_minibatch_is_close_to_lloyd_and_weights_sum_to_n():
    x = _blobs(n=3000, k=8, d=10, dtype=torch.float32)
    full = lloyd(x, 8, torch.Generator().manual_seed(0))
    mb = minibatch(x, 8, torch.Generator().manual_seed(0), batch_size=256, max_iters=50)
    assert int(mb.counts.sum()) == 3000
    assert mb.objective <= 1.05 * full.objective
    dispatched = kmeans(x, 8, torch.Generator().manual_seed(0), KMeansSettings(max_iters=50, batch_size=256))
    torch.testing.assert_close(dispatched.centers, mb.centers)


def test_medoid_is_the_member_nearest_its_center():
    x = _blobs(n=200, k=4)
    result = kmeans(x, 4, torch.Generator().manual_seed(0))
    picks = medoids(x, result.assign, result.centers)
    for j, i in enumerate(picks.tolist()):
        members = (result.assign == j).nonzero().flatten()
        assert result.assign[i] == j
        assert (x[i] - result.centers[j]).square().sum() <= (x[members] - result.centers[j]).square().sum(1).min() + 1e-12


def test_k_larger_than_points_is_an_error():
    with pytest.raises(ValueError, match="k=5"):
        kmeans(torch.randn(3, 2), 5, torch.Generator().manual_seed(0))
