"""A set's images as 8-bit pictures: PNG encoding and the exactness of the uint8 round trip."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from raydd.core.images import normalize
from raydd.storage.distilled import DistilledSet, spec_of, to_pixels


def png(pixels: Tensor) -> bytes:
    """PNG of one uint8 C×H×W image (grayscale for one channel, RGB for three)."""
    if pixels.shape[0] not in (1, 3):
        raise ValueError(f"PNG export needs 1 or 3 channels, got {pixels.shape[0]}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).squeeze(2).numpy())).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> Tensor:
    """Inverse of :func:`png`: uint8 C×H×W."""
    array = np.asarray(Image.open(io.BytesIO(data)))
    return torch.from_numpy(array.copy()).unsqueeze(0) if array.ndim == 2 else torch.from_numpy(array.copy()).permute(2, 0, 1)


def model_space(pixels: Tensor, ds: DistilledSet) -> Tensor:
    """Pixels back in the set's model space: normalised, then whitened when the set is."""
    x = normalize(pixels, spec_of(ds))
    return ds.zca.transform(x) if ds.zca is not None else x


def round_trip_error(ds: DistilledSet) -> float:
    """Max |image − image after the uint8 round trip| in model space: 0 exactly when every image, un-whitened and
    de-normalised, lies in [0, 1] on the 1/255 grid (real images: random baseline, medoids); learned images
    lose up to half a level per pixel, plus whatever falls outside [0, 1]."""
    return float((ds.images.detach().cpu() - model_space(to_pixels(ds), ds)).abs().max())
