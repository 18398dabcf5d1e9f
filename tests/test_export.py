"""Self-describing sets (format v2, v1 still read) and ``raydd export``: each format round-trips."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydd.cli import main
from raydd.config import compose
from raydd.data.registry import dataset_spec, load_dataset, open_split
from raydd.core.images import normalize
from raydd.core.zca import ZCA
from raydd.evaluate.baselines import random_set
from raydd.export.hf import DATA_FILE
from raydd.specs import LoaderSpec
from raydd.export.pixels import from_png, round_trip_error
from raydd.storage.distilled import DistilledSet, load_set, read_metadata, record_evaluation, save_set, to_pixels
from raydd.storage.fs import resolve
from s3_fixtures import BUCKET, s3_endpoint  # noqa: F401  (moto S3 on loopback)
from stderr_lines import raydd_stderr

DIGITS = {"name": "digits"}
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS)


def learned_set(spec, zca: bool = False) -> DistilledSet:
    """A 'distilled' set: off-grid float images, soft labels, weights, a learned lr (and ZCA)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(3)
    white = ZCA.fit(torch.randn(400, 1, 8, 8, generator=g), reg=0.1) if zca else None
    return DistilledSet(torch.randn(30, 1, 8, 8, generator=g), labels, torch.randn(30, 10, generator=g) * 3,
                        torch.rand(30, generator=g) + 0.5, 0.0123, white, {"method": "datm", "ipc": 3}, temperature=2.0)


def export(set_dir, fmt, out) -> int:
    return main(["export", f"set={set_dir}", f"format={fmt}", f"out={out}"])


def test_v2_metadata_describes_the_set(tmp_path, digits):
    spec = digits[0]
    ds = learned_set(spec, zca=True)
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    meta = read_metadata(resolve(str(tmp_path / "set")))
    assert meta["format"] == "raydd.distilled.v2"
    assert meta["mean"] == [0.3] and meta["std"] == [0.38] and meta["shape"] == [1, 8, 8]
    assert meta["num_classes"] == 10 and meta["class_names"] == list("0123456789")
    assert meta["lr"] == 0.0123 and meta["soft_label_temperature"] == 2.0 and meta["zca"] is True
    assert (tmp_path / "set" / "zca.safetensors").exists()
    record_evaluation(resolve(str(tmp_path / "set")), {"recipe": {"epochs": 7}, "accuracy": {"convnet": {"mean": 50.0}}})
    back = load_set(resolve(str(tmp_path / "set")))
    assert back.meta["evaluation"]["recipe"]["epochs"] == 7 and back.temperature == 2.0
    assert torch.equal(back.soft_labels, ds.soft_labels) and torch.equal(back.images, ds.images)


def test_fashion_mnist_class_names(tmp_path):
    spec = dataset_spec({"name": "fashion_mnist"})
    ds = DistilledSet(torch.zeros(10, 1, 28, 28), torch.arange(10))
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert read_metadata(resolve(str(tmp_path / "set")))["class_names"] == list(FASHION)


def write_v1(ds: DistilledSet, target) -> None:
    """A set as raydd wrote it before v2: no normalisation, no class names, no temperature."""
    n, k = ds.soft_labels.shape
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(ds.images.reshape(-1).numpy()), 64),
                      "label": pa.array(ds.labels.numpy()),
                      "soft_label": pa.FixedSizeListArray.from_arrays(pa.array(ds.soft_labels.reshape(-1).numpy()), k)})
    meta = {"method": "datm", "ipc": 3, "dataset": "digits", "format": "raydd.distilled.v1", "shape": [1, 8, 8], "n": n,
            "lr": 0.02, "zca": False}
    target.mkdir()
    pq.write_table(table.replace_schema_metadata({b"raydd": json.dumps(meta).encode()}), target / "set.parquet")


def test_v1_sets_are_read_and_export(tmp_path, digits):
    ds = learned_set(digits[0])
    write_v1(ds, tmp_path / "v1")
    back = load_set(resolve(str(tmp_path / "v1")))
    assert torch.equal(back.images, ds.images) and torch.equal(back.soft_labels, ds.soft_labels)
    assert back.lr == 0.02 and back.temperature == 1.0
    assert back.meta["mean"] == [0.3] and back.meta["std"] == [0.38] and back.meta["class_names"][3] == "3"
    assert export(tmp_path / "v1", "pt", tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "raydd.json").read_text())["format"] == "raydd.distilled.v2"
    bad = tmp_path / "v0"
    bad.mkdir()
    table = pa.table({"image": pa.array([[0.0]]), "label": pa.array([0])})
    pq.write_table(table.replace_schema_metadata({b"raydd": b'{"format": "raydd.distilled.v0"}'}), bad / "set.parquet")
    with pytest.raises(ValueError, match="unknown set format 'raydd.distilled.v0'"):
        load_set(resolve(str(bad)))


@pytest.mark.parametrize("zca", [False, True])
def test_pt_export_round_trip(tmp_path, digits, zca):
    spec = digits[0]
    ds = learned_set(spec, zca)
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert export(tmp_path / "set", "pt", tmp_path / "pt") == 0
    load = {p.name: torch.load(p, weights_only=True) for p in (tmp_path / "pt").glob("*.pt")}
    assert set(load) == {"images_best.pt", "labels_best.pt", "hard_labels.pt", "lr_best.pt", "weights_best.pt",
                         "normalization.pt", *(["zca.pt"] if zca else [])}
    assert torch.equal(load["images_best.pt"], ds.images) and torch.equal(load["labels_best.pt"], ds.soft_labels)
    assert torch.equal(load["hard_labels.pt"], ds.labels) and torch.equal(load["weights_best.pt"], ds.weights)
    assert load["lr_best.pt"].item() == pytest.approx(0.0123)
    # Undo the model space with the exported normalisation alone (as a user without raydd would).
    x = load["images_best.pt"]
    if zca:
        z = load["zca.pt"]
        x = (x.flatten(1) @ z["unwhiten"] + z["mean"]).view_as(x)
    norm = load["normalization.pt"]
    pixels = ((x * norm["std"].view(1, -1, 1, 1) + norm["mean"].view(1, -1, 1, 1)).clamp(0, 1) * 255).round()
    assert torch.equal(pixels.to(torch.uint8), to_pixels(ds))
    meta = json.loads((tmp_path / "pt" / "raydd.json").read_text())
    assert meta["soft_label_temperature"] == 2.0 and meta["class_names"] == list("0123456789")


def test_imagefolder_round_trip_is_exact_for_real_images(tmp_path, digits):
    from torchvision.datasets import ImageFolder

    spec = digits[0]
    ds = random_set(open_split(DIGITS, LoaderSpec.from_config(compose([])["loader"]), "train"), spec, ipc=5, seed=3)
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert round_trip_error(ds) == 0.0
    assert export(tmp_path / "set", "imagefolder", tmp_path / "folder") == 0
    folder = ImageFolder(str(tmp_path / "folder"))
    assert folder.classes[:2] == ["0-0", "1-1"] and len(folder) == 50
    assert [folder.class_to_idx[c] for c in folder.classes] == list(range(10))
    pixels = torch.stack([from_png((tmp_path / "folder" / p).read_bytes()) for p, _ in folder.samples])
    order = torch.tensor([int(p.rsplit("/", 1)[1][:-4]) for p, _ in folder.samples])
    assert torch.equal(torch.tensor([y for _, y in folder.samples]), ds.labels[order])
    assert torch.equal(normalize(pixels, spec), ds.images[order])  # bit-exact back in model space


def test_imagefolder_of_learned_images_is_within_half_a_level(tmp_path, digits):
    spec = digits[0]
    ds = learned_set(spec)
    ds.images = ds.images.clamp(-0.3 / 0.38, 0.7 / 0.38)  # inside [0, 1] in pixel space: rounding error only
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert export(tmp_path / "set", "imagefolder", tmp_path / "folder") == 0
    pngs = sorted((tmp_path / "folder").glob("*/*.png"), key=lambda p: int(p.stem))
    back = normalize(torch.stack([from_png(p.read_bytes()) for p in pngs]), spec)
    err = (back - ds.images).abs().max().item()
    assert 0 < err <= 0.5 / 255 / 0.38 + 1e-6
    assert err == pytest.approx(round_trip_error(ds))
    names = {p.parent.name for p in pngs}
    assert names == {f"{c}-{c}" for c in range(10)}


def test_fashion_mnist_imagefolder_directory_names(tmp_path):
    spec = dataset_spec({"name": "fashion_mnist"})
    save_set(DistilledSet(torch.zeros(10, 1, 28, 28), torch.arange(10)), resolve(str(tmp_path / "set")), spec)
    assert export(tmp_path / "set", "imagefolder", tmp_path / "folder") == 0
    assert sorted(p.name for p in (tmp_path / "folder").iterdir() if p.is_dir())[:3] == ["0-T-shirt_top", "1-Trouser",
                                                                                          "2-Pullover"]


def test_hf_export_round_trip(tmp_path, digits):
    spec = digits[0]
    ds = learned_set(spec, zca=True)
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert export(tmp_path / "set", "hf", tmp_path / "hf") == 0
    table = pq.read_table(tmp_path / "hf" / DATA_FILE)
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": list("0123456789"), "_type": "ClassLabel"}
    assert features["soft_label"]["_type"] == "Sequence" and features["weight"]["dtype"] == "float32"
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pixels = torch.stack([from_png(row["bytes"]) for row in table.column("image").to_pylist()])
    assert torch.equal(pixels, to_pixels(ds))
    assert table.column("label").to_pylist() == ds.labels.tolist()
    assert torch.equal(torch.tensor(np.stack(table.column("soft_label").to_numpy(zero_copy_only=False))), ds.soft_labels)
    assert torch.equal(torch.from_numpy(table.column("weight").to_numpy().copy()), ds.weights)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "path: data/train-*" in card and "softmax(soft_label / 2.0)" in card


def test_hf_export_loads_with_datasets_when_installed(tmp_path, digits):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not a raydd dependency")
    spec = digits[0]
    ds = learned_set(spec)
    save_set(ds, resolve(str(tmp_path / "set")), spec)
    assert export(tmp_path / "set", "hf", tmp_path / "hf") == 0
    loaded = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert loaded.features["label"].names == list("0123456789")
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded[4]["label"] == int(ds.labels[4]) and loaded[4]["image"].size == (8, 8)
    assert np.array_equal(np.asarray(loaded[4]["image"]), to_pixels(ds)[4, 0].numpy())


def test_export_refuses_bad_options_before_writing(tmp_path, capsys, digits):
    save_set(learned_set(digits[0]), resolve(str(tmp_path / "set")), digits[0])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [(["format=pt", f"out={tmp_path / 'a'}"], "needs set="),
             ([f"set={tmp_path / 'set'}", "format=zip", f"out={tmp_path / 'a'}"], "unknown export format 'zip'"),
             ([f"set={tmp_path / 'set'}", "format=pt"], "needs out="),
             ([f"set={tmp_path / 'nothing'}", f"out={tmp_path / 'a'}"], "no distilled set at"),
             ([f"set={tmp_path / 'set'}", f"out={tmp_path / 'full'}"], "already has content")]
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = raydd_stderr(capsys.readouterr().err)
        assert err.startswith("raydd: error: ") and message in err and err.count("\n") == 1, err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"] and not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    assert export(tmp_path / "set", "pt", tmp_path / "empty") == 0  # an empty directory is fine
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_export_to_s3(tmp_path, s3_endpoint, digits):  # noqa: F811
    spec = digits[0]
    ds = learned_set(spec)
    save_set(ds, resolve(f"s3://{BUCKET}/sets/a"), spec)
    assert export(f"s3://{BUCKET}/sets/a", "pt", f"s3://{BUCKET}/exports/a") == 0
    out = resolve(f"s3://{BUCKET}/exports/a")
    import io

    images = torch.load(io.BytesIO(out.join("images_best.pt").read_bytes()), weights_only=True)
    assert torch.equal(images, ds.images)
    assert export(f"s3://{BUCKET}/sets/a", "pt", f"s3://{BUCKET}/exports/a") == 2
