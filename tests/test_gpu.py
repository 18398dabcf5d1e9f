"""Every stage end to end on CUDA (digits, tiny): experts, distill (plain and constant-memory), evaluate, quantize.

Marked ``gpu``: ``pytest -m gpu`` runs them; without CUDA they skip. The NCCL gradient test
lives beside its gloo twin in test_distill_math.py.
"""

import os

import pandas as pd
import pytest
import ray
import torch

from raydd.config import compose
from raydd.distill import stage as distill_stage
from raydd.evaluate import stage as evaluate_stage
from raydd.experts import stage as experts_stage
from raydd.quantize import stage as quantize_stage
from raydd.storage.distilled import load_set
from raydd.storage.layout import set_location

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ON_GPU = ["dataset=digits", "model.width=16", "experts.num=2", "experts.epochs=4", "experts.gpus_per_expert=1",
          "distill.syn_steps=6", "distill.expert_epochs=1", "distill.max_start_epoch=2", "distill.iterations=6",
          "distill.eval_every=3", "distill.gpus_per_worker=1", "evaluate.num_models=2", "evaluate.epochs=30",
          "evaluate.gpus_per_model=1", "quantize.gpus_per_task=1", "ipc=2", "workers=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    yield tmp_path_factory.mktemp("gpu")
    ray.shutdown()


@pytest.mark.parametrize("unroll", ["plain", "constant_memory"])
def test_experts_distill_evaluate_on_cuda(root, unroll):
    cfg = compose([*ON_GPU, f"storage.root={root}", f"distill.unroll={unroll}", f"run_name=gpu-{unroll}"])
    experts_stage.run(cfg)
    distill_stage.run(cfg)
    curve = pd.read_csv(set_location(cfg).join("distill_metrics.csv").path)
    assert set(curve["device"]) == {"cuda:0"} and curve["gpu_mem_mb"].max() > 0
    ds = load_set(set_location(cfg))
    assert ds.images.shape == (20, 1, 8, 8) and torch.isfinite(ds.images).all()
    summary = evaluate_stage.run(cfg)["summary"]
    assert summary["convnet"]["mean"] > 30  # 2 images per class of digits: well above chance (10%)


def test_quantize_on_cuda_matches_cpu(root):
    sets = []
    for gpus in (0, 1):
        cfg = compose([*ON_GPU, f"storage.root={root}", "method=ddoq", "quantize.prototype=medoid",
                       f"quantize.gpus_per_task={gpus}", f"run_name=ddoq-gpu{gpus}"])
        quantize_stage.run(cfg)
        sets.append(load_set(set_location(cfg)))
    torch.testing.assert_close(sets[1].images, sets[0].images)
    assert torch.equal(sets[1].weights, sets[0].weights)
