"""``raydd report``: one static HTML page over a storage root (sets, expert stores, Tune sweeps)."""
