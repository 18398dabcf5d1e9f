"""The base of raydd's user-facing errors: the CLI prints their message as one line."""


class RayddError(Exception):
    """An input or state the user can fix (config, data, storage, store, a diverged run); the message names it."""
