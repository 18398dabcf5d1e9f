"""Search spaces written in Hydra config: ``tune.space`` maps config keys to domains.

``{ipc: {grid: [1, 10]}, distill: {lr_img: {loguniform: [10, 1000]}}}`` and
``{distill.lr_img: {loguniform: [10, 1000]}}`` are the same space: nested keys are joined
with dots until a one-entry mapping names a domain kind.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from raydd.config import validate
from raydd.specs import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")

# Keys a sweep cannot vary, and why.
FIXED = {
    "distill.iterations": "it is ASHA's time budget, the same for every trial",
    "distill.eval_every": "ASHA's rungs are multiples of it",
    "distill.log_every": "ASHA's rungs are multiples of it",
    "workers": "it decides how many trials run at once",
    "distill.cpus_per_worker": "it decides how many trials run at once",
    "distill.gpus_per_worker": "it decides how many trials run at once",
    "run_name": "each trial names its own run",
    "evaluate.set": "each trial evaluates the set it distils",
    "experts.store": "swept expert settings get their own stores",
}
FIXED_PREFIXES = {
    "tune.": "it configures the sweep itself",
    "storage.": "trials share one storage root",
    "method.": "run one sweep per method (method=...)",
    "dataset.": "run one sweep per dataset (dataset=...)",
}


@dataclass(frozen=True)
class Param:
    """One swept config key and its domain."""

    key: str
    kind: str
    values: tuple  # every value of a finite domain; [low, high] of a range


    @property
    def finite(self) -> bool:
        return self.kind in ("grid", "choice")

    def domain(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # inclusive bounds in the config
        return (tune.loguniform if self.kind == "loguniform" else tune.uniform)(lo, hi)


def get(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def with_values(cfg: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``cfg`` with dotted ``key: value`` pairs set."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, spec in space.items():
        path = f"{prefix}{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"tune.space.{path} must be a domain such as {{grid: [...]}}, got {spec!r}")
        if len(spec) == 1 and next(iter(spec)) in KINDS:
            out[path] = spec
        elif set(spec) & set(KINDS):
            raise ConfigError(f"tune.space.{path} must name exactly one domain kind ({', '.join(KINDS)}), "
                              f"got {sorted(spec)}")
        else:
            out.update(flatten_space(spec, f"{path}."))
    return out


def check_param(key: str, kind: str, values: Any, cfg: dict[str, Any]) -> Param:
    """The parsed domain of one key; a clear ConfigError for a key or domain that cannot be swept."""
    where = f"tune.space.{key}"
    for prefix, why in FIXED_PREFIXES.items():
        if key.startswith(prefix):
            raise ConfigError(f"{where}: cannot be swept ({why})")
    if key in FIXED:
        raise ConfigError(f"{where}: cannot be swept ({FIXED[key]})")
    try:
        current = get(cfg, key)
    except KeyError:
        raise ConfigError(f"{where}: {key!r} is not a config key") from None
    if isinstance(current, (dict, list)):
        raise ConfigError(f"{where}: {key!r} is a {type(current).__name__}, not a single value")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind} must be a non-empty list, got {values!r}")
    if kind in ("grid", "choice"):
        return Param(key, kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.{kind} must be [low, high] numbers, got {values!r}")
    lo, hi = values
    if not lo < hi:
        raise ConfigError(f"{where}.{kind}: low {lo} must be below high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}.loguniform needs a positive low bound, got {lo}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}.randint bounds must be integers, got {values!r}")
    if kind != "randint" and isinstance(current, int) and not isinstance(current, bool):
        raise ConfigError(f"{where}: {key} is an integer; sweep it with grid, choice or randint")
    return Param(key, kind, (lo, hi))


def parse_space(cfg: dict[str, Any]) -> list[Param]:
    """``tune.space`` as parameters; every combination of values (range bounds) is checked as a distill config."""
    space = cfg["tune"].get("space")
    if not space:
        raise ConfigError("tune.space is empty: give the keys to sweep, e.g. "
                          "'tune.space={ipc:{grid:[1,10]},distill.lr_img:{loguniform:[10,1000]}}'")
    params = [check_param(key, *next(iter(spec.items())), cfg) for key, spec in flatten_space(space).items()]
    for combo in itertools.product(*(p.values for p in params)):
        values = {p.key: v for p, v in zip(params, combo)}
        try:
            validate(with_values(cfg, values), "distill")
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"tune.space: the trial {shown} cannot run: {e}") from None
    return params
