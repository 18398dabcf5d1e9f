"""Datasets, normalisation, ZCA whitening and differentiable siamese augmentation."""
