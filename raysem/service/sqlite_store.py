"""A SQLite MLflow store as one folder: the database, and its artifacts beside it in ``<db>-artifacts/``.

MLflow records artifact locations as absolute paths, so a store that was moved or cloned elsewhere
points at its old folder until ``relocate_store`` rewrites those locations.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

PREFIX = "sqlite:///"


def _database(uri: str) -> Path:
    return Path(uri.removeprefix(PREFIX)).resolve()


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database (``<db>-artifacts/<experiment>``)
    rather than MLflow's default ``./mlruns`` under whatever directory the study started in;
    None (the server's or MLflow's default) for other stores."""
    if not uri.startswith(PREFIX):
        return None
    db = _database(uri)
    return (db.parent / f"{db.stem}-artifacts" / experiment).as_uri()


def relocate_store(uri: str) -> int:
    """Point the artifact locations of a moved SQLite store's experiments and runs (those under a
    ``<db>-artifacts/`` folder) at the one beside the database now; returns how many rows changed
    (0 when the store is where it was made)."""
    if not uri.startswith(PREFIX):
        raise ValueError(f"{uri}: not a sqlite:/// store; only a SQLite store is a folder that can move")
    db = _database(uri)
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no such SQLite store")
    marker = f"/{db.stem}-artifacts/"
    here = (db.parent / f"{db.stem}-artifacts").as_uri() + "/"
    changed = 0
    with closing(sqlite3.connect(db)) as con, con:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            rows = con.execute(
                f"SELECT rowid, {column} FROM {table} WHERE instr({column}, ?) > 0", (marker,)
            ).fetchall()
            for rowid, value in rows:
                moved = here + value.split(marker, 1)[1]
                if moved != value:
                    con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (moved, rowid))
                    changed += 1
    return changed
