"""``raydd <stage> key=value ...`` (Hydra overrides); ``raydd --help`` lists the stages."""

from __future__ import annotations

import importlib
import sys

from raydd.config import OWN_KEYS, STAGES, check_data, check_storage, compose, describe, validate, with_stage_prefix
from raydd.errors import RayddError
from raydd.specs import ConfigError

USAGE = "usage: raydd <stage> [key=value ...] [--help]\n\nstages:\n" + "\n".join(
    f"  {name:<9} {text}" for name, text in STAGES.items()) + "\n\nexample: raydd evaluate dataset=fashion_mnist method=random ipc=10"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    stage, overrides = args[0], [a for a in args[1:] if a not in ("-h", "--help")]
    try:
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        cfg = compose(with_stage_prefix(stage, overrides))
        if len(overrides) != len(args) - 1:
            print(f"raydd {stage}: {STAGES[stage]}\n\n{describe(cfg)}")
            return 0
        validate(cfg, stage)
        if stage not in OWN_KEYS:
            check_data(cfg, stage)
            check_storage(cfg, stage)
        importlib.import_module(f"raydd.{stage}.stage" if stage != "pipeline" else "raydd.pipeline").run(cfg)
    except RayddError as e:  # before or inside the stage: bad config, a corrupt shard, a diverged run, ...
        print(f"raydd: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
