"""Offline validation of the KubeRay manifests in k8s/ (no cluster needed).

ray.io resources are validated against the openAPIV3Schema of the KubeRay CRDs, read
from ../shared/kuberay-crds beside the repo root or from $RAYDD_KUBERAY_CRDS. The schema
is made strict the way the API server treats a structural schema: every object with
`properties` rejects unknown fields (strict field validation instead of silent pruning).
Native resources are validated with kubernetes_validate. The project's conventions
(docs/cluster.md, DESIGN.md "KubeRay conventions") are asserted on top of the schemas,
for the base and for the example overlay with its patches applied.
"""

import copy
import functools
import os
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from raydd.config import compose, validate

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = Path(os.environ.get("RAYDD_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
KUBERNETES_VERSION = "1.30"
RAY_GROUP = "ray.io/v1"
STAGES = {"experts", "distill", "tune", "pipeline"}
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAYDD_S3_ENDPOINT_URL")
EXAMPLE_SECRET = K8S / "base" / "secret-s3.example.yaml"
GPU = "nvidia.com/gpu"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 60k lines


def _load_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.y*ml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


DOCUMENTS = _load_documents()
KUSTOMIZATIONS = [(p, d) for p, d in DOCUMENTS if d.get("kind") == "Kustomization"]
RESOURCES = [(p, d) for p, d in DOCUMENTS if d.get("kind") != "Kustomization"]
RAY_RESOURCES = [(p, d) for p, d in RESOURCES if d["apiVersion"].startswith("ray.io/")]
NATIVE_RESOURCES = [(p, d) for p, d in RESOURCES if not d["apiVersion"].startswith("ray.io/")]
RAYJOBS = [(p, d) for p, d in RAY_RESOURCES if d["kind"] == "RayJob"]
RAYCLUSTER = next(d for _, d in RAY_RESOURCES if d["kind"] == "RayCluster")


def _id(item) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name', '')}"


# --- schemas ---------------------------------------------------------------------------


def _strict(schema: dict) -> dict:
    """CRD structural schema -> JSON schema that rejects what the API server rejects."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {name: _strict(s) for name, s in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = _strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    return out


@functools.cache
def _crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=YAML_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = _strict(v1["schema"]["openAPIV3Schema"])
            validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft202012Validator(schema)
    return validators


@pytest.fixture(scope="module")
def crd_validators():
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}; set RAYDD_KUBERAY_CRDS to their directory")
    validators = _crd_validators()
    assert {"RayCluster", "RayJob"} <= validators.keys(), f"no RayCluster/RayJob CRD in {CRD_DIR}"
    return validators


def _crd_errors(validators, doc: dict) -> list[str]:
    assert doc["kind"] in validators, f"no CRD for {doc['kind']} in {CRD_DIR}"
    errors = validators[doc["kind"]].iter_errors(doc)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


# --- walking RayCluster / RayJob specs ------------------------------------------------


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_specs(doc: dict) -> dict[str, dict]:
    cluster = _cluster_spec(doc)
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {f"worker:{g['groupName']}": g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])}
    if doc["kind"] == "RayJob":
        pods["submitter"] = doc["spec"]["submitterPodTemplate"]["spec"]
    return pods


def _containers(doc: dict) -> dict[str, dict]:
    """Every container the manifests create, the autoscaler sidecar included."""
    containers = {
        f"{pod}/{c['name']}": c
        for pod, spec in _pod_specs(doc).items()
        for c in spec.get("initContainers", []) + spec["containers"]
    }
    cluster = _cluster_spec(doc)
    if cluster.get("enableInTreeAutoscaling"):
        containers["head/autoscaler"] = cluster.get("autoscalerOptions", {})
    return containers


def _gpu_groups(doc: dict) -> list[dict]:
    return [
        g
        for g in _cluster_spec(doc).get("workerGroupSpecs", [])
        if any(GPU in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"])
    ]


def _images(doc: dict) -> list[str]:
    return [c["image"] for c in _containers(doc).values() if "image" in c]


# --- conventions, shared by the base and the overlay tests -----------------------------


def _assert_restricted(doc: dict) -> None:
    for name, pod in _pod_specs(doc).items():
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, name
        assert ctx.get("runAsUser") == 1000, name
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
    for name, container in _containers(doc).items():
        ctx = container.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, name
        assert ctx.get("runAsUser") == 1000, name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not ctx.get("capabilities", {}).get("add"), name
        assert ctx.get("privileged", False) is False, name
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def _assert_requests_equal_limits(doc: dict) -> None:
    for name, container in _containers(doc).items():
        resources = container.get("resources", {})
        assert resources.get("limits"), f"{name} has no limits"
        assert {"cpu", "memory"} <= resources["limits"].keys(), name
        assert resources.get("requests") == resources["limits"], name


def _assert_gpu_workers(doc: dict) -> None:
    cluster = _cluster_spec(doc)
    groups = _gpu_groups(doc)
    assert groups, "no GPU worker group"
    assert cluster.get("enableInTreeAutoscaling") is True
    for group in groups:
        spec = group["template"]["spec"]
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec.get("tolerations", [])
        assert group["minReplicas"] == 0
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1
        for container in spec["containers"]:
            assert int(container["resources"]["limits"][GPU]) >= 1
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all(GPU not in c.get("resources", {}).get("limits", {}) for c in head["template"]["spec"]["containers"])


def _assert_ray_version(doc: dict, ray_version: str) -> None:
    assert _cluster_spec(doc)["rayVersion"] == ray_version
    for image in _images(doc):
        tag = image.rpartition(":")[2]
        assert tag == ray_version or tag.startswith(f"{ray_version}-"), image


def _assert_s3_from_optional_secret(doc: dict) -> None:
    for name, pod in _pod_specs(doc).items():
        if name == "submitter":
            continue
        assert pod.get("serviceAccountName") == "raydd", name
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            for var in S3_ENV:
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": "raydd-s3", "key": var, "optional": True}, f"{name}: {var}"


def _assert_rayjob(doc: dict, stage: str) -> None:
    spec = doc["spec"]
    assert spec.get("shutdownAfterJobFinishes") is True
    ttl = spec.get("ttlSecondsAfterFinished")
    assert isinstance(ttl, int) and ttl > 0, "ttlSecondsAfterFinished must be a positive integer"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    assert "clusterSelector" not in spec
    program, command, *overrides = spec["entrypoint"].split()
    assert (program, command) == ("raydd", stage)
    assert all(re.fullmatch(r"[A-Za-z_][\w.]*=\S+", o) for o in overrides), overrides
    # Every node must reach the data and the runs: object storage, never a local path.
    values = dict(o.split("=", 1) for o in overrides)
    assert values["storage.root"].startswith("s3://") and values["dataset.uri"].startswith("s3://")
    # The overrides compose with raydd's own configs and pass its pre-flight checks.
    validate(compose(overrides), stage)


def _dockerfile_ray_version() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([^"]+)"', (REPO / "Dockerfile").read_text())
    assert match, "Dockerfile pins no ray version"
    return match.group(1)


# --- kustomize -------------------------------------------------------------------------


def _kustomize_resources(kustomization: Path) -> list[dict]:
    """The resources a kustomization lists (recursively), before its own transformations."""
    docs = []
    for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
        target = kustomization.parent / entry
        if target.is_dir():
            docs += _kustomize_resources(target / "kustomization.yaml")
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    return docs


def _matches(target: dict, doc: dict) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        target.get("group", "") == group
        and target.get("version", version) == version
        and target["kind"] == doc["kind"]
        and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
    )


def _json_patch_replace(doc: dict, operations: list[dict]) -> None:
    for op in operations:
        assert op["op"] == "replace", f"the overlay test supports replace only, not {op['op']}"
        *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        node = doc
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        key = int(last) if isinstance(node, list) else last
        assert key in node if isinstance(node, dict) else key < len(node), f"nothing to replace at {op['path']}"
        node[key] = op["value"]


def _overlay_resources(kustomization: Path) -> list[dict]:
    config = yaml.safe_load(kustomization.read_text())
    docs = copy.deepcopy(_kustomize_resources(kustomization))
    for patch in config.get("patches", []):
        targets = [d for d in docs if _matches(patch["target"], d)]
        assert targets, f"patch target matches nothing: {patch['target']}"
        for doc in targets:
            _json_patch_replace(doc, yaml.safe_load(patch["patch"]))
    containers = [c for d in docs if d["apiVersion"] == RAY_GROUP for c in _containers(d).values() if "image" in c]
    for image in config.get("images", []):
        replaced = 0
        for container in containers:
            name, _, tag = container["image"].rpartition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
                replaced += 1
        assert replaced, f"no container uses image {image['name']}"
    return docs


OVERLAYS = sorted((K8S / "overlays").glob("*/kustomization.yaml"))


# --- tests: files and schemas ----------------------------------------------------------


def test_expected_manifests_exist():
    base = K8S / "base"
    expected = {"raycluster.yaml", "serviceaccount.yaml", "secret-s3.example.yaml", "kustomization.yaml"}
    expected |= {f"rayjob-{stage}.yaml" for stage in STAGES}
    assert expected <= {p.name for p in base.iterdir()}
    assert OVERLAYS


@pytest.mark.parametrize("path", sorted({p for p, _ in DOCUMENTS}), ids=lambda p: str(p.relative_to(K8S)))
def test_first_line_is_the_launch_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# EXAMPLE ONLY" if path == EXAMPLE_SECRET else "# kubectl "), first


@pytest.mark.parametrize("item", KUSTOMIZATIONS, ids=_id)
def test_kustomization_resources_exist(item):
    path, doc = item
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc.get("resources")
    for entry in doc["resources"]:
        target = path.parent / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: missing {entry}"


def test_base_kustomization_lists_every_resource_but_the_example_secret():
    listed = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRET.name}
    assert set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"]) == listed


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_ray_resource_matches_kuberay_crd(item, crd_validators):
    assert item[1]["apiVersion"] == RAY_GROUP
    assert _crd_errors(crd_validators, item[1]) == []


@pytest.mark.parametrize("item", NATIVE_RESOURCES, ids=_id)
def test_native_resource_matches_kubernetes_schema(item):
    kubernetes_validate.validate(item[1], KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("item", RESOURCES, ids=_id)
def test_resource_is_named_and_labelled(item):
    metadata = item[1]["metadata"]
    # DNS label short enough for the cluster, service and pod names KubeRay derives from it.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?", metadata["name"])
    assert metadata["labels"]["app.kubernetes.io/name"] == "raydd"
    assert metadata["labels"]["app.kubernetes.io/component"]
    assert "namespace" not in metadata, "the overlay chooses the namespace"


# --- tests: conventions ----------------------------------------------------------------


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_restricted_pod_security(item):
    _assert_restricted(item[1])


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_requests_equal_limits(item):
    _assert_requests_equal_limits(item[1])


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_autoscaling_gpu_workers_and_cpu_free_head(item):
    _assert_gpu_workers(item[1])


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_ray_version_pinned_to_image_and_dockerfile(item):
    _assert_ray_version(item[1], _dockerfile_ray_version())


@pytest.mark.parametrize("item", RAY_RESOURCES, ids=_id)
def test_s3_credentials_come_from_optional_secret(item):
    _assert_s3_from_optional_secret(item[1])


@pytest.mark.parametrize("item", RAYJOBS, ids=_id)
def test_rayjob_runs_its_stage_and_cleans_up(item):
    path, doc = item
    stage = path.stem.removeprefix("rayjob-")
    assert stage in STAGES
    _assert_rayjob(doc, stage)


def test_one_rayjob_per_stage():
    assert {p.stem.removeprefix("rayjob-") for p, _ in RAYJOBS} == STAGES


@pytest.mark.parametrize("item", RAYJOBS, ids=_id)
def test_rayjob_cluster_equals_raycluster(item):
    assert item[1]["spec"]["rayClusterSpec"] == RAYCLUSTER["spec"]


def test_service_account_has_irsa_annotation():
    (sa,) = [d for _, d in RESOURCES if d["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == "raydd"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def _env_vars(node):
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node
        for value in node.values():
            yield from _env_vars(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_vars(value)


@pytest.mark.parametrize("item", RESOURCES, ids=_id)
def test_no_credentials_in_manifests(item):
    path, doc = item
    if doc["kind"] == "Secret":
        assert path == EXAMPLE_SECRET, "only the example Secret may live in the repo"
        values = {**doc.get("stringData", {}), **doc.get("data", {})}
        assert values and all(re.fullmatch(r"<[^<>]+>", v) for v in values.values()), values
        return
    for env in _env_vars(doc):
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]):
            assert "value" not in env, f"{env['name']} must come from a Secret"


def test_no_access_keys_anywhere():
    for path in [*K8S.rglob("*"), REPO / "Dockerfile"]:
        if path.is_file():
            assert not re.search(r"AKIA[0-9A-Z]{16}", path.read_text()), path


# --- tests: the example overlay ------------------------------------------------------


@pytest.mark.parametrize("kustomization", OVERLAYS, ids=lambda p: p.parent.name)
def test_overlay_patches_apply_and_keep_the_conventions(kustomization, crd_validators):
    docs = _overlay_resources(kustomization)
    ray_version = _dockerfile_ray_version()
    for doc in docs:
        if doc["apiVersion"] != RAY_GROUP:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        assert _crd_errors(crd_validators, doc) == []
        _assert_restricted(doc)
        _assert_requests_equal_limits(doc)
        _assert_gpu_workers(doc)
        _assert_ray_version(doc, ray_version)
        _assert_s3_from_optional_secret(doc)
        if doc["kind"] == "RayJob":
            _assert_rayjob(doc, doc["metadata"]["name"].removeprefix("raydd-"))


# --- tests: the validation rejects broken manifests ------------------------------------


def _set(path: str, value):
    def mutate(doc):
        *parents, last = path.split(".")
        node = doc
        for token in parents:
            node = node[int(token)] if token.isdigit() else node[token]
        node[last] = value

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set("spec.workerGroupSpecs.0.replicas", "one"), id="replicas-string"),
        pytest.param(_set("spec.workerGroupSpecs.0.replicaz", 1), id="unknown-field-replicaz"),
        pytest.param(_set("spec.headGroupSpec.rayStartParams.num-cpus", 0), id="rayStartParams-integer"),
        pytest.param(_set("spec.autoscalerOptions.upscalingMode", "Eager"), id="enum-violation"),
        pytest.param(lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), id="missing-required"),
        pytest.param(_set("spec.headGroupSpec.template.spec.containerz", []), id="unknown-pod-field"),
    ],
)
def test_broken_raycluster_is_rejected(mutate, crd_validators):
    doc = copy.deepcopy(RAYCLUSTER)
    mutate(doc)
    assert _crd_errors(crd_validators, doc)


def test_broken_rayjob_is_rejected(crd_validators):
    doc = copy.deepcopy(RAYJOBS[0][1])
    doc["spec"]["shutdownAfterJobFinishes"] = "yes"
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicaz"] = 1
    errors = _crd_errors(crd_validators, doc)
    assert any("shutdownAfterJobFinishes" in e for e in errors)
    assert any("replicaz" in e for e in errors)


def test_broken_service_account_is_rejected():
    (sa,) = [copy.deepcopy(d) for _, d in RESOURCES if d["kind"] == "ServiceAccount"]
    sa["automountServiceAccountTokn"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sa, KUBERNETES_VERSION, strict=True)
