"""The MTT/DATM reference layout: ``images_best.pt`` (model space), ``labels_best.pt``, ``lr_best.pt``.

Every file holds a tensor or a dict of tensors, so ``torch.load(path, weights_only=True)`` reads
it. ``normalization.pt`` ({mean, std} per channel) and ``zca.pt`` ({mean, whiten, unwhiten, reg},
whitened sets only) undo the model space: ``pixels = (unwhiten(x) · std + mean) · 255`` with
``unwhiten(x) = flat(x) @ unwhiten + mean``.
"""

from __future__ import annotations

import io

import torch

from raydd.storage.distilled import DistilledSet


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def pt_files(ds: DistilledSet) -> dict[str, bytes]:
    """File name → bytes: images, labels (soft-label logits when the set has them), lr, weights, normalisation."""
    files = {"images_best.pt": _save(ds.images.detach().cpu().float().contiguous()),
             "labels_best.pt": _save((ds.soft_labels if ds.soft_labels is not None else ds.labels).detach().cpu().contiguous()),
             "normalization.pt": _save({"mean": torch.tensor(ds.meta["mean"]), "std": torch.tensor(ds.meta["std"])})}
    if ds.soft_labels is not None:
        files["hard_labels.pt"] = _save(ds.labels.cpu().contiguous())
    if ds.lr is not None:
        files["lr_best.pt"] = _save(torch.tensor(ds.lr, dtype=torch.float32))
    if ds.weights is not None:
        files["weights_best.pt"] = _save(ds.weights.detach().cpu().float().contiguous())
    if ds.zca is not None:
        files["zca.pt"] = _save(ds.zca.to_tensors())
    return files
