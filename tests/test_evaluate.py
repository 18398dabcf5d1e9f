"""The evaluation protocol: losses, the random baseline's picks, training on a set, the stage on Ray."""

import copy
import json

import pytest
import ray
import torch
import torch.nn.functional as F
from torch import nn

from raydd.config import compose
from raydd.core.images import normalize, random_indices
from raydd.core.train import TrainSpec, accuracy, channels_last, set_loss, train_on_batches, train_on_set
from raydd.data.parquet import write_split
from raydd.data.registry import dataset_spec, load_split, open_split
from raydd.evaluate.baselines import full_set
from raydd.evaluate.run import fit, summarize
from raydd.evaluate.stage import run
from raydd.models.convnet import ConvNet
from raydd.specs import LoaderSpec
from raydd.storage.distilled import read_metadata
from raydd.storage.fs import resolve


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _batch(seed=0, n=6, k=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g), torch.randn(n, k, generator=g)


def test_set_loss_hard_is_cross_entropy():
    logits, labels, _ = _batch()
    torch.testing.assert_close(set_loss(logits, labels, None, None), F.cross_entropy(logits, labels))


def test_set_loss_soft_uses_softmax_targets():
    logits, labels, soft = _batch()
    for t in (1.0, 2.0):
        expected = -(F.softmax(soft / t, 1) * F.log_softmax(logits, 1)).sum(1).mean()
        torch.testing.assert_close(set_loss(logits, labels, soft, None, temperature=t), expected)
    one_hot_logits = F.one_hot(labels, 4).float() * 1e4
    torch.testing.assert_close(set_loss(logits, labels, one_hot_logits, None), F.cross_entropy(logits, labels))


def test_set_loss_weighted():
    logits, labels, soft = _batch()
    per = F.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor([1.0, 2.0, 0.0, 0.5, 3.0, 1.0])
    torch.testing.assert_close(set_loss(logits, labels, None, w), (per * w).sum() / w.sum())
    torch.testing.assert_close(set_loss(logits, labels, None, torch.full((6,), 7.0)), per.mean())
    only_first = torch.tensor([1.0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(set_loss(logits, labels, soft, only_first), set_loss(logits[:1], labels[:1], soft[:1], None))


def test_random_indices_ipc_per_class():
    labels = torch.arange(10).repeat_interleave(20)[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    idx = random_indices(labels, 3, seed=5)
    assert idx.unique().numel() == 30
    assert labels[idx].tolist() == [c for c in range(10) for _ in range(3)]
    assert torch.equal(idx, random_indices(labels, 3, seed=5))
    assert not torch.equal(idx, random_indices(labels, 3, seed=6))
    with pytest.raises(ValueError, match="fewer than ipc=21"):
        random_indices(labels, 21, seed=0)


def _separable(n, seed):
    """Class 0: bright left half; class 1: bright right half; plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[labels == 0, :, :, :4] += 1.5
    x[labels == 1, :, :, 4:] += 1.5
    return x, labels


def test_train_on_set_learns_a_separable_set():
    x, y = _separable(64, seed=0)
    test_x, test_y = _separable(200, seed=1)
    torch.manual_seed(0)
    model = ConvNet(1, 2, 8, width=8, depth=2)
    assert accuracy(model, test_x, test_y) < 0.9
    epochs = []
    train_on_set(model, x, y, TrainSpec(epochs=20, lr=0.01, batch_size=16, dsa=False), seed=0, on_epoch=epochs.append)
    assert epochs == list(range(20))
    assert accuracy(model, test_x, test_y) >= 0.95


def test_summarize_mean_and_population_std():
    rows = [{"model": "convnet", "accuracy": a} for a in (0.5, 0.7)] + [{"model": "vgg11", "accuracy": 0.2}]
    assert summarize(rows) == {"convnet": {"mean": pytest.approx(60.0), "std": pytest.approx(10.0), "n": 2},
                               "vgg11": {"mean": pytest.approx(20.0), "std": 0.0, "n": 1}}


def test_evaluate_stage_full_on_digits(tmp_path, ray_session, capsys):
    cfg = compose(["dataset=digits", "method=full", "evaluate.epochs=1", "evaluate.num_models=2",
                   f"storage.root={tmp_path}"])
    summary = run(cfg)["summary"]
    assert summary["convnet"]["n"] == 2 and 0.0 <= summary["convnet"]["mean"] <= 100.0
    assert "full ipc=all on digits" in capsys.readouterr().out
    result = json.loads(next(tmp_path.glob("evals/full-*/eval.json")).read_text())
    assert result["meta"]["set_size"] == 1437 and result["meta"]["ipc"] is None
    assert [r["epochs"] for r in result["models"]] == [1, 1]


def test_other_architectures_at_evaluate_width(tmp_path, ray_session):
    """``evaluate.width`` narrows the architectures other than ``model.name`` (the model keeps its own width), and
    the recipe in eval.json records each one's width."""
    cfg = compose(["dataset=digits", "method=random", "ipc=2", "model.width=8", "evaluate.models=[convnet,resnet18,vgg11]",
                   "evaluate.width=4", "evaluate.epochs=1", "evaluate.num_models=1", f"storage.root={tmp_path}"])
    result = run(cfg)
    assert set(result["summary"]) == {"convnet", "resnet18", "vgg11"}
    recipe = read_metadata(resolve(result["set"]))["evaluation"]["recipe"]
    assert [(m["name"], m["width"]) for m in recipe["models"]] == [("convnet", 8), ("resnet18", 4), ("vgg11", 4)]


def test_full_baseline_trains_on_the_split_as_train_on_set_on_the_whole_set():
    """One protocol: the full baseline's per-batch decoded epochs of a one-shard split are train_on_set's batches."""
    loader = LoaderSpec(mode="memory", memory_limit_gb=2.0, shuffle_shards=2, prefetch_blocks=2)
    split, spec = open_split({"name": "digits"}, loader, "train"), dataset_spec({"name": "digits"})
    tspec = TrainSpec(epochs=2, lr=0.01, batch_size=256, dsa=True)
    on_split, on_set = (ConvNet(1, 10, 8, width=8, depth=2) for _ in range(2))
    on_set.load_state_dict(on_split.state_dict())
    fit(on_split, full_set(split, spec), spec, tspec, seed=3)
    train_on_set(on_set, normalize(split.data.images, spec), split.labels, tspec, seed=3)
    for a, b in zip(on_split.state_dict().values(), on_set.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["random", "full"])
def test_streamed_splits_give_the_in_memory_accuracies(tmp_path, ray_session, capsys, method):
    """loader.mode=stream: the baseline's training images and every test pass come from Parquet shards through Ray
    Data, batch by batch; the accuracies are those of the same splits in memory."""
    for split in ("train", "test"):
        write_split(load_split({"name": "digits"}, split), resolve(str(tmp_path / "digits")), split, 10, rows_per_shard=400)
    accuracies = {}
    for mode in ("memory", "stream"):
        cfg = compose(["dataset=parquet", f"dataset.uri={tmp_path / 'digits'}", "dataset.mean=[0.3]", "dataset.std=[0.38]",
                       f"method={method}", "ipc=5", "model.width=8", "model.depth=2", "evaluate.epochs=2",
                       "evaluate.num_models=2", "evaluate.batch_size=128", f"loader.mode={mode}",
                       f"storage.root={tmp_path / mode}"])
        run(cfg)
        assert ("streamed from" in capsys.readouterr().out) == (mode == "stream")
        result = json.loads(next((tmp_path / mode).glob(f"evals/{method}-*/eval.json")).read_text())
        accuracies[mode] = [r["accuracy"] for r in result["models"]]
    assert accuracies["stream"] == accuracies["memory"]


@pytest.mark.parametrize(("setting", "device", "nhwc"), [("auto", "cpu", False), ("auto", "cuda", True),
                                                         (True, "cpu", True), (False, "cuda", False)])
def test_channels_last_auto_is_nhwc_on_cuda_and_nchw_on_cpu(setting, device, nhwc):
    assert channels_last(setting, torch.device(device)) is nhwc


@pytest.mark.parametrize(("setting", "nhwc"), [("auto", False), (True, True)])
def test_the_evaluation_protocol_lays_the_model_out_as_channels_last_resolves(setting, nhwc):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x, y = torch.randn(8, 2, 8, 8), torch.arange(8) % 2
    train_on_batches(model, lambda gen: [(x, y, None, None)], TrainSpec(epochs=1, dsa=False, channels_last=setting), 0)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) is nhwc
    assert model[0].weight.is_contiguous() is not nhwc


def test_a_compiled_training_forward_trains_as_close_to_float64_as_eager():
    """``compile``: the protocol's steps (DSA, the last short batch: a second static graph) through torch.compile
    land as near the float64 weights as eager float32 training does; the module handed back is the eager one."""
    from raydd.models.resnet import ResNet18

    torch.manual_seed(0)
    x, y, start = torch.randn(40, 1, 28, 28), torch.arange(40) % 4, ResNet18(1, 4, 28, width=4)

    def trained(compiled: bool, dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor]:
        model = train_on_set(copy.deepcopy(start).to(dtype), x.to(dtype), y,
                             TrainSpec(epochs=2, lr=0.01, batch_size=16, compile=compiled), seed=0)
        return model, torch.cat([p.detach().flatten().double() for p in model.parameters()])

    (_, eager), (compiled, fast), (_, exact) = trained(False, torch.float32), trained(True, torch.float32), \
        trained(False, torch.float64)
    assert not hasattr(compiled, "_orig_mod")
    moved = (exact - torch.cat([p.detach().flatten().double() for p in start.parameters()])).norm()
    assert (fast - exact).norm() <= 3 * (eager - exact).norm() + 1e-6 * moved
