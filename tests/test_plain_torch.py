"""A ``.pt`` export re-evaluated with plain torch, following the set's recorded recipe, matches raydd's accuracy.

Only the set's preparation and the reference figure use raydd; the training part below
``--- plain torch ---`` imports nothing from it: torch.load(weights_only=True), a ConvNet written
out in torch.nn, SGD as the recipe in ``raydd.json`` says. Tolerance: the two mean accuracies over
the recipe's seeds agree within 2 points (the spread between seeds is about that).
"""

import json
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from raydd.cli import main
from raydd.config import compose
from raydd.data.registry import dataset_spec, open_split
from raydd.evaluate.baselines import random_set
from raydd.evaluate import run as ev
from raydd.specs import RunSpec
from raydd.storage.distilled import record_evaluation, save_set
from raydd.storage.fs import resolve

TOLERANCE = 2.0  # accuracy points between the plain-torch and raydd means


def raydd_reference(tmp_path):
    """A set (100 real digits, a 'learned' lr) evaluated by raydd: train_on_set per seed, recorded in the set."""
    cfg = compose(["dataset=digits", "model.width=16", "model.depth=2", "evaluate.dsa=false", "evaluate.epochs=60",
                   "evaluate.num_models=4", "evaluate.batch_size=32", f"storage.root={tmp_path}"])
    run = RunSpec.from_config(cfg)
    spec = dataset_spec(cfg["dataset"])
    train, test = (open_split(cfg["dataset"], run.loader, split) for split in ("train", "test"))
    ds = random_set(train, spec, ipc=10, seed=1)
    ds.lr = 0.03
    loc = resolve(str(tmp_path / "set"))
    save_set(ds, loc, spec)
    tspec = ev.train_spec(run.evaluate, ds, run.channels_last)
    rows = [{"model": "convnet", "accuracy": ev.train_and_test(ev.model_spec(run.model, "convnet"), spec, ds, test, tspec,
                                                             seed, progress=False)}
            for seed in ev.recipe(run, ds)["seeds"]]
    record_evaluation(loc, {"recipe": ev.recipe(run, ds), "accuracy": ev.summarize(rows)})
    return [100 * r["accuracy"] for r in rows]


# --- plain torch ------------------------------------------------------------------------------------------------------

def plain_convnet(channels: int, classes: int, size: int, width: int, depth: int) -> nn.Module:
    """ConvNet: depth × [conv3×3 → instance norm (GroupNorm, one group per channel) → ReLU → avg-pool 2], linear."""
    layers, in_ch = [], channels
    for _ in range(depth):
        layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.GroupNorm(width, width), nn.ReLU(), nn.AvgPool2d(2)]
        in_ch, size = width, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, classes))


def digits_test_split(mean: torch.Tensor, std: torch.Tensor):
    """sklearn digits as 8-bit images, the last 20% of a seed-0 permutation, normalised with the export's mean/std."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).float().unsqueeze(1)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))[int(0.8 * len(pixels)):]
    x = (pixels[order] / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x, torch.from_numpy(bunch.target)[order]


def plain_accuracy(export_dir, seed: int) -> float:
    images = torch.load(export_dir / "images_best.pt", weights_only=True)
    labels = torch.load(export_dir / "labels_best.pt", weights_only=True)
    lr = float(torch.load(export_dir / "lr_best.pt", weights_only=True))
    norm = torch.load(export_dir / "normalization.pt", weights_only=True)
    meta = json.loads((export_dir / "raydd.json").read_text())
    r, arch = meta["evaluation"]["recipe"], meta["evaluation"]["recipe"]["models"][0]
    torch.manual_seed(seed)
    model = plain_convnet(images.shape[1], meta["num_classes"], images.shape[2], arch["width"], arch["depth"])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=r["momentum"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [r["lr_decay_epoch"]], gamma=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(r["epochs"]):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), r["batch_size"]):
            idx = order[start:start + r["batch_size"]]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    x, y = digits_test_split(norm["mean"], norm["std"])
    model.eval()
    with torch.no_grad():
        return 100 * (model(x).argmax(1) == y).float().mean().item()


def test_pt_export_reproduces_raydd_accuracy_with_plain_torch(tmp_path):
    reference = raydd_reference(tmp_path)
    assert main(["export", f"set={tmp_path / 'set'}", "format=pt", f"out={tmp_path / 'pt'}"]) == 0
    meta = json.loads((tmp_path / "pt" / "raydd.json").read_text())
    assert meta["evaluation"]["recipe"]["dsa"] is False and meta["evaluation"]["recipe"]["lr"] == 0.03
    plain = [plain_accuracy(tmp_path / "pt", seed) for seed in meta["evaluation"]["recipe"]["seeds"]]
    print(f"raydd {statistics.fmean(reference):.2f} ± {statistics.pstdev(reference):.2f}, "
          f"plain torch {statistics.fmean(plain):.2f} ± {statistics.pstdev(plain):.2f} (per seed: {reference} vs {plain})")
    assert statistics.fmean(reference) > 60  # the set teaches something: chance is 10%
    assert abs(statistics.fmean(plain) - statistics.fmean(reference)) <= TOLERANCE
