"""Datasets by name: sources on disk or object storage, the Parquet image format, conversion."""
