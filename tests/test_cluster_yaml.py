"""Offline checks of the Ray cluster launcher configs in cluster/.

Each config must match the JSON schema shipped in Ray's wheel (what `ray up` validates
against) both as written and after Ray's own preparation (provider defaults merged,
on-prem node types filled in), and install exactly the versions pinned in the Dockerfile.
"""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))
RAY_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
PIN = re.compile(r'"([A-Za-z0-9_.-]+(?:\[[^\]]*\])?)==([^"\s]+)"')


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _pins(text: str) -> dict[str, str]:
    return dict(PIN.findall(text))


def _schema_errors(config: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(RAY_SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def test_both_cluster_configs_exist():
    assert {p.name for p in CLUSTER_YAMLS} >= {"aws-gpu.yaml", "onprem.yaml"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_matches_ray_schema(path):
    assert _schema_errors(_load(path)) == []


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_passes_ray_up_validation(path):
    # The steps `ray up` runs before it contacts a cloud or a host.
    validate_config(prepare_config(_load(path)))


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_first_line_is_the_launch_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# ray up cluster/{path.name}")


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_installs_the_dockerfile_pins(path):
    dockerfile_pins = _pins((REPO / "Dockerfile").read_text())
    assert dockerfile_pins["ray[default,train,tune]"] == ray.__version__
    setup = "\n".join(_load(path)["setup_commands"])
    assert _pins(setup) == dockerfile_pins


def test_aws_gpu_workers_are_spot_with_an_instance_profile():
    config = _load(REPO / "cluster" / "aws-gpu.yaml")
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers
    for node_type in workers.values():
        assert node_type["min_workers"] == 0
        node = node_type["node_config"]
        assert node["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert config["provider"]["cache_stopped_nodes"] is False


def test_onprem_lists_its_hosts():
    provider = _load(REPO / "cluster" / "onprem.yaml")["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_no_credentials(path):
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|AWS_SECRET_ACCESS_KEY", text)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(max_workers="many"), id="max_workers-string"),
        pytest.param(lambda c: c.update(max_wokers=2), id="unknown-top-level-key"),
        pytest.param(lambda c: next(iter(c["available_node_types"].values())).update(min_workers="0"), id="min_workers-string"),
    ],
)
def test_broken_config_is_rejected(mutate):
    config = copy.deepcopy(_load(REPO / "cluster" / "aws-gpu.yaml"))
    mutate(config)
    assert _schema_errors(config)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
