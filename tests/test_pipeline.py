"""``raydd pipeline``: a named set is only ever read, never written."""

import hashlib
from pathlib import Path

from raydd.cli import main
from raydd.config import compose
from raydd.data.registry import dataset_spec, open_split
from raydd.evaluate.baselines import random_set
from raydd.specs import LoaderSpec
from raydd.storage.distilled import save_set
from raydd.storage.fs import resolve

from s3_fixtures import ray_session  # noqa: F401


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pipeline_with_evaluate_set_leaves_that_set_alone(tmp_path, ray_session, capsys):  # noqa: F811
    """``evaluate.set`` names a set to evaluate: the pipeline's own set and its random-real baseline go elsewhere."""
    spec = dataset_spec({"name": "digits"})
    train = open_split({"name": "digits"}, LoaderSpec.from_config(compose([])["loader"]), "train")
    mine = tmp_path / "mine"
    save_set(random_set(train, spec, ipc=3, seed=7), resolve(str(mine)), spec)
    (mine / "eval.json").write_text('{"mine": true}')
    before = checksums(mine)
    argv = ["pipeline", "dataset=digits", "method=ddoq", "quantize.encoder=pixel", "ipc=2", "evaluate.epochs=2",
            "evaluate.num_models=1", f"evaluate.set={mine}", f"storage.root={tmp_path / 'runs'}"]
    assert main(argv) == 0, capsys.readouterr().err
    assert checksums(mine) == before
    assert "| ddoq | 2 | convnet |" in capsys.readouterr().out


def test_weak_experts_warning_names_both_accuracies():
    from raydd.pipeline import weak_experts

    rows = [{"model": "convnet", "random": 84.07}, {"model": "resnet18", "random": 90.0}]
    # the 8-epoch lr-0.01 experts of benchmarks/results/large_ipc.md against random real at IPC 100
    msg = weak_experts(0.8277, "convnet", rows)
    assert msg and "82.77%" in msg and "84.07%" in msg and "experts.lr" in msg
    assert weak_experts(0.8755, "convnet", rows) is None  # the lr-0.1 experts pass it
    assert weak_experts(None, "convnet", rows) is None  # a set given as evaluate.set: no experts to judge
    assert weak_experts(0.8277, "vgg11", rows) is None  # not evaluated on the experts' architecture
