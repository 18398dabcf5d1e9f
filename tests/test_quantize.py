import importlib.util
import json
from types import SimpleNamespace

import pytest
import ray
import torch
from torch import nn

from raydd.config import check_data, compose, validate
from raydd.core.images import DatasetSpec, normalize
from raydd.core.train import set_loss
from raydd.data.registry import dataset_spec, load_split, open_split
from raydd.evaluate.run import evaluate_set
from raydd.quantize import stage
from raydd.specs import ConfigError, RunSpec
from raydd.quantize.encoders import (AutoencoderEncoder, ConvAutoencoder, PCAEncoder, PixelEncoder, VAEEncoder,
                                     check_vae, restore)
from raydd.core.kmeans import KMeansSettings
from raydd.quantize.prototypes import quantize_class
from raydd.storage.distilled import load_set
from raydd.storage.fs import resolve
from s3_fixtures import BUCKET, s3_endpoint  # noqa: F401  (fixture)

FASHION = DatasetSpec("fashion_mnist", 10, 1, 28, (0.2861,), (0.3530,))
DIGITS = DatasetSpec("digits", 10, 1, 8, (0.3,), (0.38,))


@pytest.fixture(scope="module")
def ray_session(s3_endpoint):  # noqa: F811  (the S3 env must be set before Ray starts its workers)
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _cfg(tmp_path, *overrides):
    return compose(["dataset=digits", "method=ddoq", "ipc=3", f"storage.root={tmp_path}", *overrides])


def _images(n: int, spec: DatasetSpec = FASHION, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, spec.channels, spec.image_size, spec.image_size), generator=g, dtype=torch.uint8)


def test_pixel_encoder_round_trips_exactly():
    x = normalize(_images(5), FASHION)
    enc = PixelEncoder((1, 28, 28))
    z = enc.encode(x)
    assert z.shape == (5, 784)
    assert torch.equal(enc.decode(z), x)


def test_pca_with_all_components_round_trips():
    x = normalize(_images(300, DIGITS), DIGITS)
    pca = PCAEncoder.fit(x, 64)
    torch.testing.assert_close(pca.decode(pca.encode(x)), x, atol=1e-4, rtol=0)
    small = PCAEncoder.fit(x, 16)
    assert small.encode(x).shape == (300, 16)
    torch.testing.assert_close(small.components @ small.components.T, torch.eye(16), atol=1e-4, rtol=0)


def test_encoder_state_restores_the_same_encoder():
    x = normalize(_images(8, DIGITS), DIGITS)
    ae = AutoencoderEncoder(ConvAutoencoder(1, 8, 12))
    for enc in (PixelEncoder((1, 8, 8)), PCAEncoder.fit(normalize(_images(200, DIGITS), DIGITS), 10), ae):
        again = restore(enc.state(), DIGITS)
        torch.testing.assert_close(again.decode(again.encode(x)), enc.decode(enc.encode(x)))
    assert ae.encode(x).shape == (8, 12) and ae.decode(ae.encode(x)).shape == x.shape


class TinyVAE(nn.Module):
    """Randomly initialised stand-in with diffusers' AutoencoderKL interface (8× down, 3 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=3)
        self.down = nn.Conv2d(3, 4, 8, stride=8)
        self.up = nn.ConvTranspose2d(4, 3, 8, stride=8)

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=self.down(x)))

    def decode(self, z):
        return SimpleNamespace(sample=torch.tanh(self.up(z)))


def test_vae_encoder_with_a_tiny_module():
    torch.manual_seed(0)
    vae = VAEEncoder(TinyVAE(), FASHION)  # 28 → 32 px → 4×4×4 latents
    images = _images(60)
    z = vae.encode(normalize(images, FASHION))
    assert z.shape == (60, 64)
    protos = quantize_class(images, FASHION, vae, 4, KMeansSettings(), torch.Generator().manual_seed(0))
    assert protos.images.shape == (4, 1, 28, 28) and torch.isfinite(protos.images).all()
    assert int(protos.counts.sum()) == 60


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is not None, reason="diffusers is installed")
def test_vae_needs_a_path_and_diffusers(tmp_path):
    with pytest.raises(ConfigError, match="vae_path"):
        check_vae(None)
    with pytest.raises(ConfigError, match="not a directory"):
        check_vae(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="diffusers"):
        check_vae(str(tmp_path))


def test_bad_encoder_name_fails_before_work(tmp_path):
    with pytest.raises(ConfigError, match="'nope'"):
        validate(_cfg(tmp_path, "quantize.encoder=nope"), "quantize")
    with pytest.raises(ConfigError, match="'mean'"):
        validate(_cfg(tmp_path, "quantize.prototype=mean"), "quantize")
    with pytest.raises(ConfigError, match="latent_dim=100"):
        check_data(_cfg(tmp_path, "quantize.encoder=pca", "quantize.latent_dim=100"), "quantize")
    assert not (tmp_path / "sets").exists()


def test_ipc_above_a_class_size_names_the_class(tmp_path, ray_session):
    with pytest.raises(ValueError, match=r"class 0 has \d+ training images, fewer than ipc=1000"):
        stage.run(_cfg(tmp_path, "ipc=1000"))


def test_ddoq_pixel_end_to_end_and_evaluates_weighted(tmp_path, ray_session):
    cfg = _cfg(tmp_path, "evaluate.epochs=2", "evaluate.num_models=1")
    out = stage.run(cfg)
    ds = load_set(resolve(out["set"]))
    sizes = torch.bincount(load_split(cfg["dataset"], "train").labels, minlength=10)
    assert ds.images.shape == (30, 1, 8, 8) and ds.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert ds.weights is not None
    for c in range(10):
        assert float(ds.weights[ds.labels == c].sum()) == sizes[c]
    assert ds.meta["method"] == "ddoq" and ds.meta["encoder"] == "pixel" and set(ds.meta["objective"]) == {str(c) for c in range(10)}
    assert resolve(out["set"]).join("grid.png").exists()
    # the weighted loss is what the evaluator trains with
    logits, labels = torch.randn(30, 10), ds.labels
    expected = (nn.functional.cross_entropy(logits, labels, reduction="none") * ds.weights).sum() / ds.weights.sum()
    torch.testing.assert_close(set_loss(logits, labels, None, ds.weights), expected)
    run = RunSpec.from_config(cfg)
    rows = evaluate_set(ds, run, dataset_spec(cfg["dataset"]), open_split(cfg["dataset"], run.loader, "test"))
    assert len(rows) == 1 and 0.0 <= rows[0]["accuracy"] <= 1.0


def test_d4m_has_no_weights_and_minibatch_path(tmp_path, ray_session):
    out = stage.run(_cfg(tmp_path, "method=d4m", "quantize.batch_size=64", "quantize.classes_per_task=4"))
    ds = load_set(resolve(out["set"]))
    assert ds.weights is None and len(ds) == 30
    assert ds.meta["minibatch_classes"] == list(range(10))


def test_medoid_prototypes_are_training_images(tmp_path, ray_session):
    cfg = _cfg(tmp_path, "quantize.prototype=medoid")
    ds = load_set(resolve(stage.run(cfg)["set"]))
    train = load_split(cfg["dataset"], "train")
    real = normalize(train.images, dataset_spec(cfg["dataset"])).flatten(1)
    for image, label in zip(ds.images.flatten(1), ds.labels):
        match = (real == image).all(1).nonzero().flatten()
        assert match.numel() and train.labels[match[0]] == label
    assert ds.meta["prototype"] == "medoid" and int(ds.weights.sum()) == len(train)


def test_pca_and_autoencoder_end_to_end(tmp_path, ray_session):
    pca = load_set(resolve(stage.run(_cfg(tmp_path, "quantize.encoder=pca", "quantize.latent_dim=8",
                                          "run_name=pca"))["set"]))
    assert pca.meta["latent_dim"] == 8 and int(pca.weights.sum()) == sum(pca.meta["class_sizes"].values())
    ae = ["quantize.encoder=autoencoder", "quantize.latent_dim=8", "quantize.ae_epochs=1", "quantize.fit_samples=300"]
    first = stage.run(_cfg(tmp_path, *ae, "run_name=ae1"))
    stored = tmp_path / "encoders" / "digits-autoencoder-8"
    info = json.loads((stored / "config.json").read_text())
    assert info["epochs"] == 1 and info["samples"] == 300 and (stored / "model.safetensors").exists()
    mtime = (stored / "model.safetensors").stat().st_mtime_ns
    second = stage.run(_cfg(tmp_path, *ae, "run_name=ae2"))
    assert (stored / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not retrained
    a, b = load_set(resolve(first["set"])), load_set(resolve(second["set"]))
    torch.testing.assert_close(a.images, b.images)
    spec = dataset_spec(_cfg(tmp_path)["dataset"])
    low, high = normalize(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), spec).flatten().tolist()
    assert a.images.min() >= low - 1e-6 and a.images.max() <= high + 1e-6


def test_parquet_shards_on_s3_in_and_set_on_s3_out(tmp_path, ray_session):
    from raydd.data.parquet import write_split

    cfg = _cfg(tmp_path)
    train = load_split(cfg["dataset"], "train")
    write_split(train, resolve(f"s3://{BUCKET}/digits"), "train", num_classes=10, rows_per_shard=500)
    out = stage.run(compose(["dataset=parquet", f"dataset.uri=s3://{BUCKET}/digits", "dataset.mean=[0.3]",
                             "dataset.std=[0.38]", "method=ddoq", "ipc=2", f"storage.root=s3://{BUCKET}/runs"]))
    assert out["set"].startswith(f"s3://{BUCKET}/runs/sets/")
    ds = load_set(resolve(out["set"]))
    assert len(ds) == 20
    for c in range(10):
        assert float(ds.weights[ds.labels == c].sum()) == int((train.labels == c).sum())


def test_memory_groups_cut_a_task_s_classes_by_size():
    sizes = {0: 10, 1: 10, 2: 30, 3: 5, 4: 5}
    assert stage.memory_groups([0, 1, 2, 3, 4], sizes, 1, 20) == [[0, 1], [2], [3, 4]]
    assert stage.memory_groups([3, 4], sizes, 2, 0) == [[3], [4]]


def _parquet_digits(tmp_path) -> list[str]:
    """digits written as class-mixed Parquet shards; the overrides that read them."""
    from raydd.data.parquet import write_split

    write_split(load_split(_cfg(tmp_path)["dataset"], "train"), resolve(str(tmp_path / "pq")), "train", num_classes=10,
                rows_per_shard=300)
    return ["dataset=parquet", f"dataset.uri={tmp_path / 'pq'}", "dataset.mean=[0.3]", "dataset.std=[0.38]"]


def _same_set(a, b) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and (
        torch.equal(a.weights, b.weights) if a.weights is not None else b.weights is None)


def _quantized(cfg):
    return load_set(resolve(stage.run(cfg)["set"]))


def test_streamed_shards_give_the_in_memory_set(tmp_path, ray_session):
    data = _parquet_digits(tmp_path)
    pca = ["method=ddoq", "ipc=3", "quantize.encoder=pca", "quantize.latent_dim=8", "quantize.classes_per_task=4",
           f"storage.root={tmp_path}"]
    memory, stream = (_quantized(compose([*data, *pca, f"loader.mode={mode}", f"run_name={mode}"]))
                      for mode in ("memory", "stream"))
    assert len(memory) == 30 and _same_set(memory, stream)


def test_a_tiny_memory_limit_reads_each_task_in_several_groups(tmp_path, ray_session, capsys):
    medoid = ["method=d4m", "quantize.prototype=medoid", "quantize.classes_per_task=4"]
    whole = _quantized(_cfg(tmp_path, *medoid, "run_name=whole"))
    assert "3 tasks reading 3 groups of classes" in capsys.readouterr().out
    grouped = _quantized(_cfg(tmp_path, *medoid, "loader.memory_limit_gb=1e-5", "run_name=grouped"))
    assert "3 tasks reading 10 groups of classes" in capsys.readouterr().out
    assert _same_set(whole, grouped)
