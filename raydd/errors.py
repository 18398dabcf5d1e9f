"""raydd's user-facing errors: the CLI prints their message as one ``raydd: error:`` line (exit 1)."""


class RayddError(Exception):
    """An input or state the user can fix (config, data, storage, store, a diverged run); the message names it."""


class NotFoundError(RayddError, FileNotFoundError):
    """An input a stage needs is not there (an expert store before ``raydd experts``, a set before it is made)."""


class CorruptError(RayddError, ValueError):
    """A file that cannot be trusted (a shard, manifest, set or Parquet file); the message names it."""


class RunError(RayddError, RuntimeError):
    """A run that failed in a way the message explains (experts that kept failing, a sweep whose trials all failed)."""
