"""Where raysem keeps its caches: ``$RAYSEM_HOME`` or ``~/.cache/raysem``."""

from __future__ import annotations

import os
from pathlib import Path


def raysem_home() -> Path:
    """Root of raysem's caches (models, distance tables, fetched data, pending results)."""
    home = os.environ.get("RAYSEM_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "raysem"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    """A sub-folder of the raysem home for one kind of cached object."""
    path = raysem_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
