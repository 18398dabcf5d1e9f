"""``raydd data``: convert the configured dataset into raydd Parquet shards at ``data.out``.

``raydd data dataset=imagenet1k dataset.root=/data/imagenet dataset.image_size=64 data.out=s3://bucket/in1k-64``
then ``raydd <stage> dataset=imagenet1k dataset.uri=s3://bucket/in1k-64``. ImageFolder trees are decoded
by Ray tasks, one shard each (the tree must be readable where the tasks run), so no process holds
more than ``data.rows_per_shard`` images; small datasets are converted on the driver. The generated
``imagenet1k_standin`` (:mod:`raydd.data.standin`) is written the same way, one Ray task per shard.
"""

from __future__ import annotations

from typing import Any

import ray

from raydd.core.images import DatasetSpec
from raydd.data.convert import SPLITS, chunks, mixed, convert_in_memory, convert_shard, is_image_folder
from raydd.data.registry import dataset_spec, is_generated, source_root
from raydd.data.sources import image_folder_samples
from raydd.data.standin import shard_count, write_standin_shard
from raydd.runtime import init_ray
from raydd.storage.fs import resolve, s3_endpoint


@ray.remote(num_cpus=1)
def _convert_shard_task(samples: list[tuple[str, int]], image_size: int, out_uri: str, endpoint_url: str | None,
                        split: str, index: int, num_classes: int) -> int:
    return convert_shard(samples, image_size, resolve(out_uri, endpoint_url), split, index, num_classes)


@ray.remote(num_cpus=1)
def _standin_shard_task(cfg_dataset: dict[str, Any], out_uri: str, endpoint_url: str | None, split: str, index: int,
                        rows_per_shard: int) -> int:
    return write_standin_shard(cfg_dataset, resolve(out_uri, endpoint_url), split, index, rows_per_shard)


def _collect(pending: list[ray.ObjectRef], split: str) -> int:
    """Wait for a split's shard tasks (a progress bar over shards); returns the rows they wrote."""
    from tqdm import tqdm

    rows = 0
    with tqdm(total=len(pending), desc=f"{split} shards") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rows += ray.get(done[0])
            bar.update(1)
    return rows


def convert_image_folder(cfg: dict[str, Any], spec: DatasetSpec) -> dict[str, int]:
    """List both splits first (fail before any work), then decode and write every shard in parallel."""
    samples = {split: image_folder_samples(source_root(cfg["dataset"]), split) for split in SPLITS}
    samples["train"] = mixed(samples["train"], cfg["data"]["shuffle_seed"])  # class-mixed shards stream well
    endpoint = s3_endpoint(cfg["storage"].get("endpoint_url"))
    init_ray(cfg)
    rows = {}
    for split in SPLITS:
        pending = [_convert_shard_task.remote(chunk, spec.image_size, cfg["data"]["out"], endpoint, split, i,
                                              spec.num_classes)
                   for i, chunk in enumerate(chunks(samples[split], cfg["data"]["rows_per_shard"]))]
        rows[split] = _collect(pending, split)
    return rows


def write_standin(cfg: dict[str, Any]) -> dict[str, int]:
    """Generate and write every shard of the stand-in in parallel, one Ray task each."""
    endpoint = s3_endpoint(cfg["storage"].get("endpoint_url"))
    rows_per_shard = cfg["data"]["rows_per_shard"]
    init_ray(cfg)
    rows = {}
    for split in SPLITS:
        pending = [_standin_shard_task.remote(cfg["dataset"], cfg["data"]["out"], endpoint, split, i, rows_per_shard)
                   for i in range(shard_count(cfg["dataset"], split, rows_per_shard))]
        rows[split] = _collect(pending, split)
    return rows


def run(cfg: dict[str, Any]) -> dict[str, int]:
    spec = dataset_spec(cfg["dataset"])
    out = resolve(cfg["data"]["out"], cfg["storage"].get("endpoint_url"))
    if is_generated(spec.name):
        rows = write_standin(cfg)
    elif is_image_folder(cfg["dataset"]):
        rows = convert_image_folder(cfg, spec)
    else:
        rows = convert_in_memory(cfg["dataset"], spec, out, cfg["data"]["rows_per_shard"])
    print(f"{spec.name} ({spec.image_size}px): {rows['train']} train and {rows['test']} test images → {out.uri}")
    print(f"read them with: dataset={spec.name} dataset.uri={out.uri}")
    return rows
