"""The authors' MTT code (GeorgeCazenavette/mtt-distillation, a checkout given by path) timed at distill_speed.py's setup.

    python benchmarks/reference_mtt.py /path/to/mtt-distillation unroll 20 3 [THREADS]  # 20 steps: s / outer iteration
    python benchmarks/reference_mtt.py /path/to/mtt-distillation epoch 60000 [THREADS]  # one buffer.py expert epoch

Runs the checkout's own ``networks.ConvNet`` (instance norm), ``reparam_module.ReparamModule`` and
``utils.DiffAugment``/``utils.epoch`` exactly as its ``distill.py`` inner loop and ``buffer.py`` call
them; only the surrounding data loading, logging (wandb) and ZCA (kornia) are left out, so those two
imports are stubbed when missing. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import types
from pathlib import Path


def load(checkout: Path):
    """Import the checkout's modules (stubbing the logging/ZCA packages this benchmark does not use)."""
    sys.path.insert(0, str(checkout))
    for name in ("kornia", "wandb"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    import networks
    import reparam_module
    import utils

    return networks, reparam_module, utils


def unroll(checkout: Path, steps: int, iters: int, threads: int = 2) -> dict:
    """``distill.py``'s outer iteration: ``steps`` inner steps on all 100 images, DSA, then the matching loss's backward."""
    import torch

    networks, reparam_module, utils = load(checkout)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = networks.ConvNet(3, 10, 128, 3, "relu", "instancenorm", "avgpooling", (32, 32))
    student = reparam_module.ReparamModule(net)
    student.train()
    start = student.flat_param.detach().clone()
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(100, 3, 32, 32, requires_grad=True)
    labels = torch.arange(10).repeat_interleave(10)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    param, criterion = utils.ParamDiffAug(), torch.nn.CrossEntropyLoss()

    def once() -> None:
        params = [start.clone().requires_grad_(True)]
        for _ in range(steps):
            order = torch.randperm(100)
            x = utils.DiffAugment(images[order], "color_crop_cutout_flip_scale_rotate", param=param)
            grad = torch.autograd.grad(criterion(student(x, flat_param=params[-1]), labels[order]), params[-1],
                                       create_graph=True)[0]
            params.append(params[-1] - syn_lr * grad)
        loss = torch.nn.functional.mse_loss(params[-1], target, reduction="sum")
        (loss / torch.nn.functional.mse_loss(start, target, reduction="sum")).backward()

    once()
    tic = time.perf_counter()
    for _ in range(iters):
        once()
    return {"what": "reference plain unroll", "syn_steps": steps, "seconds": (time.perf_counter() - tic) / iters,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def epoch(checkout: Path, images: int, threads: int = 2) -> dict:
    """One ``buffer.py`` expert epoch: ``utils.epoch('train', ...)``, batch 256, SGD lr 0.01, DSA, on random images."""
    import torch

    networks, _, utils = load(checkout)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(images, 3, 32, 32), torch.randint(10, (images,)))
    loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True, num_workers=0)
    net = networks.ConvNet(3, 10, 128, 3, "relu", "instancenorm", "avgpooling", (32, 32))
    args = types.SimpleNamespace(device="cpu", dataset="CIFAR10", dsa=True, dsa_param=utils.ParamDiffAug(),
                                 dsa_strategy="color_crop_cutout_flip_scale_rotate")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0, weight_decay=0)
    tic = time.perf_counter()
    utils.epoch("train", dataloader=loader, net=net, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), args=args,
                aug=True)
    return {"what": "reference expert epoch", "images": images, "seconds": time.perf_counter() - tic,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    checkout, kind, *numbers = sys.argv[1:]
    print(json.dumps({"unroll": unroll, "epoch": epoch}[kind](Path(checkout), *map(int, numbers))))
