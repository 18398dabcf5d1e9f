"""Distillation as optimal quantization (DDOQ) and D4M prototypes: k-means per class in an encoder's latent space."""
