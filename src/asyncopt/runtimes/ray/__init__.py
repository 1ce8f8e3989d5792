"""``runtime = "ray"``: worker actors on a local or remote Ray cluster (see :mod:`.runtime`).
Only this package imports ``ray`` (the optional ``asyncopt[ray]`` extra)."""
