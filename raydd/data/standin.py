"""``imagenet1k_standin``: an ImageNet-1K-shaped dataset generated from a seed, for benchmarks that stream it.

``raydd data dataset=imagenet1k_standin data.out=<uri>`` writes it, one Ray task per shard
(:mod:`raydd.data.stage`); stages then read it as ``dataset=imagenet1k_standin dataset.uri=<uri>``.

A class is a smooth template: a base colour plus a few low-frequency colour gratings, periodic over the
image, drawn from the class's own seeded RNG. An image is its class's template circularly shifted, maybe
flipped left-right, scaled in brightness and overlaid with uniform pixel noise, which leaves a row about
as incompressible as a natural image. A split's rows are a seeded permutation of its (class, instance)
pairs, so shards mix classes like a shuffled dataset; shard ``i`` holds rows ``i·R … (i+1)·R−1`` and
draws its pixels from an RNG seeded with (seed, split, i), so it is a pure function of the dataset
keys, the split, ``i`` and ``R`` (``data.rows_per_shard``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raydd.core.images import ImageData
from raydd.data.parquet import write_shard
from raydd.data.sources import DatasetNotFoundError
from raydd.storage.fs import Location

NAME = "imagenet1k_standin"
TEMPLATES, ORDER, PIXELS = 0, 1, 2  # RNG streams (the first word after the seed)
SPLIT_STREAMS = {"train": 0, "test": 1}
GRATINGS = 4
MAX_CYCLES = 4  # a grating's frequency: about 1 … MAX_CYCLES cycles per image
CHUNK = 256  # images shifted, scaled and noised at once (int16 buffers of a few MB)


def class_size(cfg_dataset: dict[str, Any], split: str) -> int:
    """Images per class in ``split``."""
    return cfg_dataset["images_per_class"] if split == "train" else cfg_dataset["test_per_class"]


def split_rows(cfg_dataset: dict[str, Any], split: str) -> int:
    """Rows of ``split``: classes × images per class."""
    return cfg_dataset["num_classes"] * class_size(cfg_dataset, split)


def shard_count(cfg_dataset: dict[str, Any], split: str, rows_per_shard: int) -> int:
    """Shards of ``rows_per_shard`` rows (the last one shorter) that hold ``split``."""
    return -(-split_rows(cfg_dataset, split) // rows_per_shard)


def shard_labels(seed: int, split: str, num_classes: int, per_class: int, index: int,
                 rows_per_shard: int) -> np.ndarray:
    """The labels of shard ``index``: its rows of a seeded permutation of the split's (class, instance) pairs."""
    order = np.random.default_rng([seed, ORDER, SPLIT_STREAMS[split]]).permutation(num_classes * per_class)
    return order[index * rows_per_shard:(index + 1) * rows_per_shard] // per_class


def class_templates(seed: int, classes: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``len(classes)×3×size×size``: each class's colour + Σ_k amp_k·cos(2π(f_k·(x, y))/size + φ_k).

    Each class's parameters come from its own RNG, so it looks the same in every shard and split.
    The gratings are separable (cos(a + b) = cos a·cos b − sin a·sin b), so a template is a rank-2K matmul.
    """
    colours, left, right = [], [], []
    grid = 2 * np.pi * np.arange(size) / size
    for c in classes:
        rng = np.random.default_rng([seed, TEMPLATES, int(c)])
        colours.append(rng.uniform(48, 208, 3))
        radius, angle = rng.integers(1, MAX_CYCLES + 1, GRATINGS), rng.uniform(0, 2 * np.pi, GRATINGS)
        fx, fy = np.rint(radius * np.cos(angle)), np.rint(radius * np.sin(angle))
        a = fy[:, None] * grid + rng.uniform(0, 2 * np.pi, GRATINGS)[:, None]  # K×size, along y
        b = fx[:, None] * grid  # along x
        amp = rng.normal(0, 28, (GRATINGS, 3)).T[:, None, :]  # 3×1×K
        left.append(np.concatenate([amp * np.cos(a).T, -amp * np.sin(a).T], axis=2))  # 3×size×2K
        right.append(np.concatenate([np.cos(b), np.sin(b)]))  # 2K×size
    out = np.stack(left, dtype=np.float32) @ np.stack(right, dtype=np.float32)[:, None]
    out += np.stack(colours, dtype=np.float32)[:, :, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(templates: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images ``templates[which]``, each circularly shifted, flipped left-right with probability ½,
    scaled in brightness by 0.70 … 1.30 and overlaid with uniform noise in −31 … 32."""
    n, size = len(which), templates.shape[-1]
    tiled = np.tile(templates, (1, 1, 2, 2))  # a shift is a window of the tiled template
    dy, dx = rng.integers(0, size, (2, n))
    flip = rng.random(n) < 0.5
    gain = rng.integers(45, 84, n).astype(np.int16)  # ×gain/64
    out = np.empty((n, 3, size, size), np.uint8)
    buf = np.empty((CHUNK, 3, size, size), np.int16)
    for start in range(0, n, CHUNK):
        x = buf[:min(CHUNK, n - start)]
        for j, i in enumerate(range(start, start + len(x))):
            window = tiled[which[i], :, dy[i]:dy[i] + size, dx[i]:dx[i] + size]
            x[j] = window[..., ::-1] if flip[i] else window
        x *= gain[start:start + len(x), None, None, None]
        x >>= 6
        x += np.frombuffer(rng.bytes(x.size), np.uint8).reshape(x.shape) & 63
        x -= 31
        out[start:start + len(x)] = np.clip(x, 0, 255)
    return out


def generate_shard(cfg_dataset: dict[str, Any], split: str, index: int, rows_per_shard: int) -> ImageData:
    """Shard ``index`` of ``split``, from the dataset keys alone."""
    d = cfg_dataset
    labels = shard_labels(d["seed"], split, d["num_classes"], class_size(d, split), index, rows_per_shard)
    classes, which = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng([d["seed"], PIXELS, SPLIT_STREAMS[split], index])
    images = render(class_templates(d["seed"], classes, d["image_size"]), which, rng)
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def write_standin_shard(cfg_dataset: dict[str, Any], out: Location, split: str, index: int, rows_per_shard: int) -> int:
    """Generate shard ``index`` of ``split`` and write it; returns its rows."""
    data = generate_shard(cfg_dataset, split, index, rows_per_shard)
    write_shard(data, out, split, index, cfg_dataset["num_classes"])
    return len(data)


def unwritten(root: str | None, split: str) -> ImageData:
    """The registry's loader: the stand-in is too big to generate in every stage, so it is only read as Parquet."""
    raise DatasetNotFoundError(f"{NAME} is generated, not loaded: write it first with `raydd data dataset={NAME} "
                               f"data.out=<uri>`, then read it with dataset.uri=<uri>")
