import torch

from raydd.core.zca import ZCA


def _correlated(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = 3 * 4 * 4
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    scales = torch.linspace(1.0, 4.0, d)
    return (torch.randn(n, d, generator=g) * scales @ basis.T + 0.5).view(n, 3, 4, 4)


def _cov(x: torch.Tensor) -> torch.Tensor:
    return torch.cov(x.flatten(1).T.double())


def test_whitened_covariance_is_identity():
    x = _correlated()
    z = ZCA.fit(x, reg=1e-4).transform(x)
    assert z.shape == x.shape
    torch.testing.assert_close(_cov(z), torch.eye(48, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.flatten(1).mean(0), torch.zeros(48), atol=1e-5, rtol=0)


def test_regularisation_shrinks_variance():
    x = _correlated()
    eigvals = torch.linalg.eigvalsh(_cov(x))
    reg = 0.5
    whitened = torch.linalg.eigvalsh(_cov(ZCA.fit(x, reg=reg).transform(x)))
    torch.testing.assert_close(whitened, eigvals / (eigvals + reg), atol=1e-4, rtol=0)


def test_inverse_round_trip_and_gradient():
    x = _correlated()
    zca = ZCA.fit(x)
    torch.testing.assert_close(zca.inverse(zca.transform(x)), x, atol=1e-4, rtol=0)
    y = x[:4].clone().requires_grad_()
    zca.transform(y).square().sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    zca = ZCA.fit(_correlated(), reg=0.1)
    zca.save(tmp_path / "zca.safetensors")
    loaded = ZCA.load(tmp_path / "zca.safetensors")
    assert loaded.reg == zca.reg
    for name in ("mean", "whiten", "unwhiten"):
        assert torch.equal(getattr(loaded, name), getattr(zca, name))
    assert ZCA.from_tensors(zca.to_tensors()).reg == 0.1
