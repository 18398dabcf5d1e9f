"""raydd: distributed dataset distillation on Ray."""

__version__ = "0.1.0"
