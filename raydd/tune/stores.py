"""Expert stores of a sweep: a trial whose expert settings differ from the base reads its own store.

Swept keys that change the trajectories (``experts.gradient_penalty``, ``model.width``, ...)
need one store per value, trained by the driver before the sweep; trials only read them.
"""

from __future__ import annotations

import itertools
from typing import Any

from raydd.config import ConfigError
from raydd.experts.stage import hashed_config
from raydd.storage.layout import experts_location
from raydd.storage.trajectory import config_hash
from raydd.tune.space import Param, with_values


def trial_store(cfg: dict[str, Any], base: dict[str, Any]) -> str | None:
    """The store URI for ``cfg`` when its experts differ from ``base``'s (beside the default one), else None."""
    digest = config_hash(hashed_config(cfg))
    if digest == config_hash(hashed_config(base)):
        return None
    return f"{experts_location(cfg).uri}-{digest[:8]}"


def with_store(cfg: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    store = trial_store(cfg, base)
    return with_values(cfg, {"experts.store": store}) if store else cfg


def store_params(params: list[Param], base: dict[str, Any]) -> list[Param]:
    """The swept parameters that change the expert trajectories; each must have finitely many values."""
    out = [p for p in params if any(trial_store(with_values(base, {p.key: v}), base) for v in p.values)]
    for p in out:
        if not p.finite:
            raise ConfigError(f"tune.space.{p.key} changes the expert trajectories: sweep it with grid or choice, "
                              "so that each value's expert store is trained before the sweep")
    return out


def store_configs(params: list[Param], base: dict[str, Any]) -> list[dict[str, Any]]:
    """One config per distinct expert store the sweep's trials read."""
    swept = store_params(params, base)
    configs: list[dict[str, Any]] = []
    for combo in itertools.product(*(p.values for p in swept)):
        cfg = with_store(with_values(base, {p.key: v for p, v in zip(swept, combo)}), base)
        if all(experts_location(cfg).uri != experts_location(c).uri for c in configs):
            configs.append(cfg)
    return configs
