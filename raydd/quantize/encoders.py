"""Encoders between model-space images (``N×C×H×W``, normalised) and flat latents (``N×D``).

``pixel`` is the identity, ``pca`` a linear projection fitted on training images,
``autoencoder`` a small convolutional autoencoder raydd trains, ``vae`` a pretrained
latent-diffusion VAE (diffusers ``AutoencoderKL``) loaded from a local directory.
An encoder crosses the Ray object store as an :class:`EncoderState` (kind, small config,
tensors) and is rebuilt in each task by :func:`restore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from raydd.core.images import DatasetSpec
from raydd.specs import ENCODERS, ConfigError


@dataclass
class EncoderState:
    """What travels through the object store: the kind, a JSON-able config and the tensors."""

    kind: str
    config: dict[str, Any]
    tensors: dict[str, Tensor]


class Encoder(Protocol):
    def encode(self, x: Tensor) -> Tensor: ...   # model-space images N×C×H×W → latents N×D
    def decode(self, z: Tensor) -> Tensor: ...   # latents N×D → model-space images N×C×H×W
    def state(self) -> EncoderState: ...


class PixelEncoder:
    """Latent = the flattened normalised image."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = tuple(shape)

    def encode(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)

    def state(self) -> EncoderState:
        return EncoderState("pixel", {"shape": list(self.shape)}, {})


class PCAEncoder:
    """Projection on the top ``latent_dim`` principal components; decode is the inverse transform."""

    def __init__(self, mean: Tensor, components: Tensor, shape: tuple[int, int, int]) -> None:
        self.mean, self.components, self.shape = mean, components, tuple(shape)  # components: latent_dim×D

    @classmethod
    def fit(cls, x: Tensor, latent_dim: int) -> PCAEncoder:
        """Eigen-decomposition of the (float64) covariance of ``x`` (N×C×H×W)."""
        flat = x.reshape(x.shape[0], -1).double()
        if latent_dim > flat.shape[1]:
            raise ConfigError(f"quantize.latent_dim={latent_dim} exceeds the image dimension {flat.shape[1]}")
        mean = flat.mean(0)
        centred = flat - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        components = vectors.flip(1)[:, :latent_dim].T
        return cls(mean.float(), components.float().contiguous(), tuple(x.shape[1:]))

    def encode(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) - self.mean) @ self.components.T

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.components + self.mean).reshape(z.shape[0], *self.shape)

    def state(self) -> EncoderState:
        return EncoderState("pca", {"shape": list(self.shape)}, {"mean": self.mean, "components": self.components})


class ConvAutoencoder(nn.Module):
    """Two stride-2 convolutions and a linear layer down to ``latent_dim``; the mirror image up."""

    def __init__(self, channels: int, image_size: int, latent_dim: int, width: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise ConfigError(f"quantize.encoder=autoencoder needs an image size divisible by 4, got {image_size}")
        self.config = {"channels": channels, "image_size": image_size, "latent_dim": latent_dim, "width": width}
        s = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * s * s, latent_dim))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * s * s), nn.ReLU(), nn.Unflatten(1, (2 * width, s, s)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class AutoencoderEncoder:
    """A trained :class:`ConvAutoencoder` used as encoder/decoder."""

    def __init__(self, module: ConvAutoencoder) -> None:
        self.module = module.eval()

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.module.encoder(x)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.module.decoder(z)

    def state(self) -> EncoderState:
        return EncoderState("autoencoder", dict(self.module.config), dict(self.module.state_dict()))


class LatentDiffusionVAE(Protocol):
    """The part of diffusers' ``AutoencoderKL`` raydd uses (images in [-1, 1])."""

    config: Any  # .in_channels

    def encode(self, x: Tensor) -> Any: ...  # .latent_dist.mean: N×c×h×w
    def decode(self, z: Tensor) -> Any: ...  # .sample: N×C×H×W


def check_vae(path: str | None) -> None:
    """Fail fast when the VAE cannot be loaded: no path, not a directory, or no diffusers."""
    if not path:
        raise ConfigError("quantize.encoder=vae needs quantize.vae_path: a local directory holding a diffusers "
                          "AutoencoderKL (config.json + diffusion_pytorch_model.safetensors)")
    if not Path(path).is_dir():
        raise ConfigError(f"quantize.vae_path {path!r} is not a directory")
    _autoencoder_kl()


def load_vae(path: str | None) -> LatentDiffusionVAE:
    """``diffusers.AutoencoderKL`` from a local directory; never the network."""
    check_vae(path)
    return _autoencoder_kl().from_pretrained(path, local_files_only=True)


def _autoencoder_kl() -> Any:
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ConfigError("quantize.encoder=vae needs the diffusers package (pip install diffusers); "
                          "it is not installed") from e
    return AutoencoderKL


class VAEEncoder:
    """A latent-diffusion VAE on model-space images: de-normalise to [-1, 1], resize up to a
    multiple of 8, repeat grey to the VAE's channels; decode undoes each step."""

    def __init__(self, module: LatentDiffusionVAE, spec: DatasetSpec) -> None:
        self.module, self.spec = module.eval(), spec
        device = next(module.parameters()).device
        self.size = -(-spec.image_size // 8) * 8
        self.mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
        zero = torch.zeros(1, spec.channels, spec.image_size, spec.image_size, device=device)
        self.latent_shape = tuple(self._latent(zero).shape[1:])

    @torch.no_grad()
    def _latent(self, x: Tensor) -> Tensor:
        u = (x * self.std + self.mean) * 2 - 1
        if self.size != self.spec.image_size:
            u = nn.functional.interpolate(u, size=self.size, mode="bilinear", align_corners=False)
        if self.module.config.in_channels != u.shape[1]:
            u = u.mean(1, keepdim=True).expand(-1, self.module.config.in_channels, -1, -1)
        return self.module.encode(u).latent_dist.mean

    def encode(self, x: Tensor) -> Tensor:
        return self._latent(x).flatten(1)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        u = self.module.decode(z.reshape(z.shape[0], *self.latent_shape)).sample
        if u.shape[1] != self.spec.channels:
            u = u.mean(1, keepdim=True).expand(-1, self.spec.channels, -1, -1)
        if self.size != self.spec.image_size:
            u = nn.functional.interpolate(u, size=self.spec.image_size, mode="bilinear", align_corners=False)
        return ((u + 1) / 2 - self.mean) / self.std

    def state(self) -> EncoderState:
        return EncoderState("vae", {"diffusers_config": dict(self.module.config)}, dict(self.module.state_dict()))


def restore(state: EncoderState, spec: DatasetSpec, device: torch.device | str = "cpu") -> Encoder:
    """Rebuild an encoder from its :class:`EncoderState` on ``device`` (inside a Ray task)."""
    tensors = {k: v.to(device) for k, v in state.tensors.items()}
    if state.kind == "pixel":
        return PixelEncoder(tuple(state.config["shape"]))
    if state.kind == "pca":
        return PCAEncoder(tensors["mean"], tensors["components"], tuple(state.config["shape"]))
    if state.kind == "autoencoder":
        module = ConvAutoencoder(**state.config).to(device)
        module.load_state_dict(tensors)
        return AutoencoderEncoder(module)
    if state.kind == "vae":
        module = _autoencoder_kl().from_config(state.config["diffusers_config"]).to(device)
        module.load_state_dict(tensors)
        return VAEEncoder(module, spec)
    raise ConfigError(f"unknown quantize.encoder {state.kind!r}; choose one of {', '.join(ENCODERS)}")
