"""Build the configured encoder once, in the driver: fit PCA, train (or reuse) the autoencoder, load the VAE.

A trained autoencoder is kept under ``<storage.root>/encoders/<dataset>-autoencoder-<latent_dim>/``
as ``model.safetensors`` + ``config.json`` and reused by later runs.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F

from raydd.core.images import DatasetSpec
from raydd.specs import ConfigError, QuantizeSpec
from raydd.quantize.encoders import (AutoencoderEncoder, ConvAutoencoder, Encoder, PCAEncoder, PixelEncoder,
                                     VAEEncoder, load_vae)
from raydd.storage.fs import Location

AUTOENCODER_FORMAT = "raydd.autoencoder.v1"


def autoencoder_location(root: Location, dataset: str, q: QuantizeSpec) -> Location:
    return root.join("encoders", f"{dataset}-autoencoder-{q.latent_dim}")


def train_autoencoder(x: torch.Tensor, spec: DatasetSpec, latent_dim: int, epochs: int, seed: int,
                      batch_size: int = 256, lr: float = 1e-3) -> tuple[ConvAutoencoder, float]:
    """Adam on the reconstruction MSE of model-space images ``x``; returns the model and its last-epoch MSE."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ConvAutoencoder(spec.channels, spec.image_size, latent_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mse = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            loss = F.mse_loss(model(x[idx]), x[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        mse = total / x.shape[0]
    return model.eval(), mse


def save_autoencoder(model: ConvAutoencoder, loc: Location, info: dict[str, Any]) -> None:
    """``model.safetensors`` first, then ``config.json`` (its presence marks a complete encoder)."""
    from safetensors.torch import save

    loc.join("model.safetensors").write_bytes_atomic(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    loc.join("config.json").write_bytes_atomic(
        json.dumps({"format": AUTOENCODER_FORMAT, **model.config, **info}, indent=2).encode())


def load_autoencoder(loc: Location, spec: DatasetSpec) -> ConvAutoencoder | None:
    """The stored autoencoder, or None when there is none; a mismatching one is an error."""
    if not loc.join("config.json").exists():
        return None
    from safetensors.torch import load

    info = json.loads(loc.join("config.json").read_bytes())
    if (info.get("format"), info["channels"], info["image_size"]) != (AUTOENCODER_FORMAT, spec.channels, spec.image_size):
        raise ConfigError(f"the autoencoder at {loc.uri} was trained for {info['channels']}×{info['image_size']}² images, "
                          f"not {spec.channels}×{spec.image_size}²: delete it or use another storage.root")
    model = ConvAutoencoder(info["channels"], info["image_size"], info["latent_dim"], info["width"])
    model.load_state_dict(load(loc.join("model.safetensors").read_bytes()))
    return model.eval()


def needs_sample(q: QuantizeSpec, autoencoder: Location) -> bool:
    """Whether building the encoder needs training images (PCA, or an autoencoder not yet stored)."""
    return q.encoder == "pca" or (q.encoder == "autoencoder" and not autoencoder.join("config.json").exists())


def build_encoder(q: QuantizeSpec, spec: DatasetSpec, sample: torch.Tensor | None, autoencoder: Location,
                  seed: int) -> Encoder:
    """The configured encoder; ``sample`` (model-space training images) when :func:`needs_sample`; a
    trained autoencoder is kept at (and reused from) ``autoencoder``."""
    if q.encoder == "pixel":
        return PixelEncoder((spec.channels, spec.image_size, spec.image_size))
    if q.encoder == "pca":
        return PCAEncoder.fit(sample, q.latent_dim)
    if q.encoder == "vae":
        return VAEEncoder(load_vae(q.vae_path), spec)
    model = load_autoencoder(autoencoder, spec)
    if model is None:
        model, mse = train_autoencoder(sample, spec, q.latent_dim, q.ae_epochs, seed)
        save_autoencoder(model, autoencoder, {"dataset": spec.name, "epochs": q.ae_epochs, "samples": sample.shape[0],
                                              "seed": seed, "train_mse": mse})
    return AutoencoderEncoder(model)
