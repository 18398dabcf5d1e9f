"""One class → IPC prototypes: encode, k-means in latent space, then decode the centroids
(``centroid``) or take the training image nearest each centroid (``medoid``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raydd.core.images import DatasetSpec, normalize
from raydd.core.kmeans import KMeansSettings, kmeans, medoids
from raydd.quantize.encoders import Encoder

ENCODE_CHUNK = 1024


@dataclass
class Prototypes:
    images: Tensor      # k×C×H×W model space
    counts: Tensor      # k int64: cluster masses, summing to the class size
    objective: float    # k-means objective in latent space
    iterations: int
    minibatch: bool


def encode_images(encoder: Encoder, images: Tensor, spec: DatasetSpec, chunk: int = ENCODE_CHUNK) -> Tensor:
    """Latents of uint8 images, normalised and encoded ``chunk`` at a time."""
    with torch.no_grad():
        return torch.cat([encoder.encode(normalize(images[s:s + chunk], spec)) for s in range(0, images.shape[0], chunk)])


def clamp_to_pixels(x: Tensor, spec: DatasetSpec) -> Tensor:
    """Clamp model-space images to what real pixels can be (decoders may overshoot)."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return torch.maximum(torch.minimum(x, (1 - mean) / std), -mean / std)


def quantize_class(images: Tensor, spec: DatasetSpec, encoder: Encoder, k: int, settings: KMeansSettings,
                   gen: torch.Generator, prototype: str = "centroid") -> Prototypes:
    """``k`` prototypes of one class's uint8 ``images`` from k-means in ``encoder``'s latent space:
    the decoded centroids, or (``medoid``) each cluster's member nearest its centroid."""
    latents = encode_images(encoder, images, spec)
    result = kmeans(latents, k, gen, settings)
    if prototype == "medoid":
        chosen = normalize(images[medoids(latents, result.assign, result.centers)], spec)
    else:
        with torch.no_grad():
            chosen = clamp_to_pixels(encoder.decode(result.centers), spec)
    return Prototypes(chosen.cpu(), result.counts.cpu(), result.objective, result.iterations,
                      settings.batch_size is not None and images.shape[0] > settings.batch_size)
