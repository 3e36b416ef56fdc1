"""Ray's token authentication for the job API: a token file that only its owner can read."""

from __future__ import annotations

import os
from pathlib import Path

from raysem.paths import raysem_home


def ensure_token(path: Path | None = None) -> Path:
    """Create a Ray auth token at ``path`` (default ``$RAYSEM_HOME/ray_auth_token``) with mode 0600, once."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path = path or raysem_home() / "ray_auth_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_new_authentication_token())
    os.chmod(path, 0o600)
    return path


def auth_env(path: Path) -> dict[str, str]:
    """Environment variables that make `ray start` / `ray job submit` use the token at ``path``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
