"""What raydd itself printed to stderr, without the lines Ray's log monitor forwards from its node daemons."""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DAEMON = re.compile(r"^\((raylet|gcs_server|autoscaler|monitor|dashboard)[^)]*\) ")


def raydd_stderr(err: str) -> str:
    """``err`` less whole lines from Ray's daemons (a raylet's "disk over 95% full", say), which any
    process joined to a Ray node can print at any moment and which raydd neither writes nor controls."""
    return "".join(line for line in err.splitlines(keepends=True) if not DAEMON.match(ANSI.sub("", line)))
