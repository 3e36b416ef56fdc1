"""What every section builder reads: the study's data, where figures go, its logged spec, notes for the headline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysem.report.data import StudyData
from raysem.report.render import Figure


@dataclass
class Context:
    data: StudyData
    fig_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    """The study's spec as its latest parent run logged it (empty when unreadable)."""
    notes: list[str] = field(default_factory=list)
    """What the headline must say about itself (e.g. an unconfirmed sweep)."""

    def figure(self, key: str, path: Path, caption: str) -> Figure:
        self.figures[key] = path
        return Figure(caption, path)


def logged_spec(data: StudyData) -> dict[str, Any]:
    """The spec JSON of the latest parent run ({} when there is none or it does not parse)."""
    for parent in reversed(data.parents):
        try:
            return json.loads(parent.data.params.get("spec", ""))
        except ValueError:
            continue
    return {}
