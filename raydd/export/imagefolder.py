"""A torchvision ``ImageFolder``: one directory per class, one PNG per image (de-normalised, un-whitened).

Directories are ``<index>-<name>`` with the index zero-padded, so ImageFolder's sorted
``class_to_idx`` gives back the set's labels; files are ``<position in the set>.png``. Hard
labels only: soft labels and weights travel in the ``pt`` and ``hf`` exports.
"""

from __future__ import annotations

import re

from raydd.export.pixels import png
from raydd.storage.distilled import DistilledSet, to_pixels


def class_dirs(names: list[str]) -> list[str]:
    """``<index>-<name>`` per class, safe as a directory name and sorting in label order."""
    width = len(str(len(names) - 1))
    return [f"{i:0{width}d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'class'}" for i, name in enumerate(names)]


def imagefolder_files(ds: DistilledSet) -> dict[str, bytes]:
    """Relative path → PNG bytes."""
    dirs, width = class_dirs(ds.meta["class_names"]), len(str(len(ds) - 1))
    return {f"{dirs[int(label)]}/{i:0{width}d}.png": png(p) for i, (p, label) in enumerate(zip(to_pixels(ds), ds.labels))}
