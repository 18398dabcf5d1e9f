"""GSAM (the ``ftd`` expert variant) pinned to the reference's formulas on hand-computed 2-parameter cases."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from raydd.config import compose
from raydd.experts.gsam import gsam_step, proportional_rho
from raydd.experts.train import epoch_rho
from raydd.specs import ExpertsSpec


def quadratic(w: tuple[float, float]) -> tuple[nn.Linear, Callable[[], Tensor]]:
    """A bias-free 1×2 linear layer whose loss is f(w) = ½w₁² + 2w₂², so ∇f(w) = (w₁, 4w₂)."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([w]))
    return model, lambda: (model.weight.square() * torch.tensor([[0.5, 2.0]])).sum()


def expected_direction(g: list[float], gp: list[float], alpha: float) -> torch.Tensor:
    """g_p − α·(g − (⟨g, g_p⟩/‖g_p‖²)·g_p), term by term."""
    inner = g[0] * gp[0] + g[1] * gp[1]
    sq = gp[0] ** 2 + gp[1] ** 2
    return torch.tensor([[gp[i] - alpha * (g[i] - inner / sq * gp[i]) for i in range(2)]])


def test_one_step_plain_perturbation():
    """w = (1, 1): g = (1, 4), ‖g‖ = √17; ρ = 0.1√17 gives e = 0.1g = (0.1, 0.4), g_p = ∇f(1.1, 1.4) = (1.1, 5.6);
    ⟨g, g_p⟩ = 23.5, ‖g_p‖² = 32.57."""
    model, loss_fn = quadratic((1.0, 1.0))
    loss = gsam_step(model, loss_fn, rho=0.1 * math.sqrt(17), alpha=0.4, adaptive=False)
    assert loss.item() == pytest.approx(2.5)  # f at the unperturbed weights
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.0, 1.0]]), rtol=0, atol=0)  # restored exactly
    want = torch.tensor([[1.1 - 0.4 * (1 - 23.5 / 32.57 * 1.1), 5.6 - 0.4 * (4 - 23.5 / 32.57 * 5.6)]])
    torch.testing.assert_close(model.weight.grad, want)
    torch.testing.assert_close(want, expected_direction([1, 4], [1.1, 5.6], 0.4))


def test_one_step_adaptive_perturbation_and_sgd_update():
    """Adaptive (ASAM): w = (1, 2), g = (1, 8), |w|⊙g = (1, 16), ‖·‖ = √257; e = ρ·w²⊙g/√257 = ρ(1, 32)/√257;
    ρ = √257/100 gives e = (0.01, 0.32), g_p = ∇f(1.01, 2.32) = (1.01, 9.28); then SGD (lr 0.1) steps from w."""
    model, loss_fn = quadratic((1.0, 2.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = gsam_step(model, loss_fn, rho=math.sqrt(257) / 100, alpha=0.3, adaptive=True)
    assert loss.item() == pytest.approx(8.5)
    want = expected_direction([1, 8], [1.01, 9.28], 0.3)
    torch.testing.assert_close(model.weight.grad, want)
    opt.step()
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.0, 2.0]]) - 0.1 * want)


def test_no_perturbation_is_the_plain_gradient_and_alpha_zero_is_sam():
    """ρ = 0: g_p = g, whose part orthogonal to itself is 0; α = 0: the SAM direction g_p alone."""
    model, loss_fn = quadratic((1.0, 1.0))
    gsam_step(model, loss_fn, rho=0.0, alpha=0.4, adaptive=True)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[1.0, 4.0]]))
    gsam_step(model, loss_fn, rho=0.1 * math.sqrt(17), alpha=0.0, adaptive=False)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[1.1, 5.6]]))


def test_the_direction_removes_alpha_of_the_orthogonal_part():
    """d − g_p = −α·g_⊥ is orthogonal to g_p, and ⟨d, g_p⟩ = ⟨g_p, g_p⟩ (the sharpness step is untouched)."""
    model, loss_fn = quadratic((0.7, -1.3))
    gsam_step(model, loss_fn, rho=0.5, alpha=0.4, adaptive=False)
    d = model.weight.grad[0]
    norm = math.hypot(0.7, 4 * 1.3)
    gp = torch.tensor([0.7 * (1 + 0.5 / norm), -4 * 1.3 * (1 + 4 * 0.5 / norm)])  # ∇f(w + ρg/‖g‖)
    assert torch.dot(d - gp, gp).item() == pytest.approx(0.0, abs=1e-5)
    assert (d - gp).norm().item() > 0.01


def test_the_perturbed_pass_leaves_batchnorm_statistics_as_the_first_left_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    reference.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(reference(x), y)  # one training-mode pass at the unperturbed weights
    gsam_step(model, lambda: nn.functional.cross_entropy(model(x), y), rho=1.0, alpha=0.4, adaptive=True)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_rho_is_linear_in_the_lr():
    """The gsam package's ProportionScheduler: (ρ − ρ_min)/(ρ_max − ρ_min) = (lr − lr_min)/(lr_max − lr_min)."""
    assert proportional_rho(0.01, 0.01, 0.001, 0.1, 0.01) == pytest.approx(0.1)
    assert proportional_rho(0.001, 0.01, 0.001, 0.1, 0.01) == pytest.approx(0.01)
    assert proportional_rho(0.0055, 0.01, 0.001, 0.1, 0.01) == pytest.approx(0.055)
    assert proportional_rho(0.01, 0.01, 0.01, 2.0, 2.0) == 2.0  # constant lr: ρ_max


def experts(*overrides: str) -> ExpertsSpec:
    return ExpertsSpec.from_config(compose(list(overrides))["experts"])


def test_epoch_rho_follows_the_expert_lr_schedule():
    """lr 0.01 ×0.1 after epoch epochs//2 + 1 (0-based 6 of 10): ρ_max for epochs 0–6, ρ_min after."""
    spec = experts("experts.variant=ftd", "experts.epochs=10", "experts.lr_decay=0.1", "experts.gsam_rho_max=0.05",
                   "experts.gsam_rho_min=0.02")
    assert [epoch_rho(spec, e) for e in range(10)] == [pytest.approx(0.05)] * 7 + [pytest.approx(0.02)] * 3
    assert {epoch_rho(experts("method=datm"), e) for e in range(6)} == {0.01}


def test_datm_trains_ftd_experts_with_the_authors_settings():
    """DATM's buffer/buffer_FTD.py with buffer/run_buffer.sh: GSAM ρ 0.01 (constant), α 0.4, adaptive, SGD lr 0.01,
    no momentum, weight decay or lr decay, batch 256."""
    e = experts("method=datm")
    assert (e.variant, e.gsam_rho_max, e.gsam_rho_min, e.gsam_alpha, e.gsam_adaptive) == ("ftd", 0.01, 0.01, 0.4, True)
    assert (e.lr, e.lr_decay, e.momentum, e.weight_decay, e.batch_size, e.dsa) == (0.01, 1.0, 0.0, 0.0, 256, True)
