"""Expert stores of a sweep: a trial whose expert settings differ from the base reads its own store.

Stores are named by a digest of their settings, so each swept value of a key that changes the
trajectories (``experts.gradient_penalty``, ``model.width``, ...) has its own store; the driver
trains them before the sweep and trials only read them.
"""

from __future__ import annotations

import itertools
from typing import Any

from raydd.specs import ConfigError
from raydd.storage.layout import experts_location, store_settings
from raydd.tune.space import Param, with_values


def store_params(params: list[Param], base: dict[str, Any]) -> list[Param]:
    """The swept parameters that change the expert trajectories; each must have finitely many values."""
    out = [p for p in params if any(store_settings(with_values(base, {p.key: v})) != store_settings(base) for v in p.values)]
    for p in out:
        if not p.finite:
            raise ConfigError(f"tune.space.{p.key} changes the expert trajectories: sweep it with grid or choice, "
                              "so that each value's expert store is trained before the sweep")
        if base["experts"].get("store"):
            raise ConfigError(f"tune.space.{p.key} changes the expert trajectories, but experts.store names one store: "
                              "leave experts.store unset so that each value gets its own")
    return out


def store_configs(params: list[Param], base: dict[str, Any]) -> list[dict[str, Any]]:
    """One config per distinct expert store the sweep's trials read."""
    swept = store_params(params, base)
    configs = [with_values(base, {p.key: v for p, v in zip(swept, combo)}) for combo in itertools.product(*(p.values for p in swept))]
    return list({experts_location(c).uri: c for c in configs}.values())
