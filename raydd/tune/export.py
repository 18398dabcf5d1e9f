"""The best trial's config as a ready-to-run experiment file (raydd/configs/experiment style) and override list.

The file sets the config groups (``override /method: ast``) and the values that differ from
what those groups compose to; the same difference as ``key=value`` overrides is checked to
compose back to exactly the trial's config before anything is written.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from omegaconf import OmegaConf

from raydd.config import compose, config_dir

GROUPS = ("dataset", "model", "storage", "method")
PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
RESERVED = {"null", "true", "false", "nan", "inf", "none", "yes", "no", "on", "off"}


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def override_value(v: Any) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{override_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if PLAIN.match(s) and s.lower() not in RESERVED:
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_options() -> dict[str, str]:
    """The group options ``config.yaml``'s defaults list chooses."""
    entries = OmegaConf.to_container(OmegaConf.load(config_dir() / "config.yaml"))["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


def group_option(group: str, values: dict[str, Any]) -> str:
    """The option of a config group (``configs/<group>/*.yaml``) that agrees with ``values`` on most keys
    (ties: the default option); ``dataset`` and ``method`` options are named by their ``name``."""
    if group in ("dataset", "method"):
        return values["name"]
    default = default_options().get(group)

    def score(path) -> tuple[int, bool]:
        option = OmegaConf.to_container(OmegaConf.load(path))
        return sum(1 if values.get(k) == v else -1 for k, v in option.items()), path.stem == default

    return max((config_dir() / group).glob("*.yaml"), key=score).stem


def without(cfg: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in keys}


def experiment(cfg: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """Group choices, differing values and the equivalent override list that compose to ``cfg`` (``tune`` aside)."""
    groups = {g: group_option(g, cfg[g]) for g in GROUPS}
    reference = flatten(without(compose([f"{g}={o}" for g, o in groups.items()]), "tune"))
    target = flatten(without(cfg, "tune"))
    missing = sorted(set(reference) - set(target))
    if missing:
        raise ValueError(f"cannot export a config without the keys {missing}")
    values = {k: v for k, v in target.items() if k not in reference or reference[k] != v}
    overrides = [f"{g}={o}" for g, o in groups.items()]
    overrides += [f"{'' if k in reference else '+'}{k}={override_value(v)}" for k, v in values.items()]
    if without(compose(overrides), "tune") != without(cfg, "tune"):
        raise ValueError(f"the exported overrides do not reproduce the trial's config: {overrides}")
    return groups, values, overrides


def experiment_yaml(cfg: dict[str, Any], name: str, note: str) -> str:
    """An experiment file for ``cfg`` (merged at the root, see ``config.yaml``): its launch command first,
    a note, the same config as an override list, then the groups and values."""
    groups, values, overrides = experiment(cfg)
    header = [f"# raydd distill experiment={name}", *(f"# {line}" for line in note.splitlines()),
              "# or, without this file:", "#   raydd distill " + " ".join(shlex.quote(o) for o in overrides)]
    defaults = ["defaults:", *(f"  - override /{g}: {o}" for g, o in groups.items())]
    body = OmegaConf.to_yaml(OmegaConf.create(nest(values))) if values else ""
    return "\n".join([*header, *defaults]) + "\n" + body
