"""The fact record every dataset is turned into."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Probe:
    """A prompt with its reference answer (locality and portability checks)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Fact:
    """One piece of knowledge to learn: ``prompt`` should be answered with ``target``.

    ``rephrasings`` are N(x) (generality), ``locality`` are O(x) with the dataset's reference
    answers (locality itself compares against the base model's outputs), ``portability`` are
    multi-hop probes when the dataset has them.
    """

    id: str
    prompt: str
    target: str
    subject: str = ""
    true_answer: str | None = None
    rephrasings: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    portability: tuple[Probe, ...] = ()
    source: str = ""
    split: str = ""
    relation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fact:
        values = dict(data)
        values["rephrasings"] = tuple(values.get("rephrasings", ()))
        values["locality"] = tuple(Probe(**p) for p in values.get("locality", ()))
        values["portability"] = tuple(Probe(**p) for p in values.get("portability", ()))
        return cls(**values)


class DatasetError(ValueError):
    """A dataset file or record that raysem cannot use; the message names file, record and field."""


@dataclass
class FactSet:
    """Facts loaded from one source, with the format they were read from and the source's content hash."""

    name: str
    format: str
    facts: list[Fact] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.facts)


def facts_sha256(facts: list[Fact]) -> str:
    """sha256 of the canonical JSON serialisation of ``facts`` (sorted keys, no extra whitespace, UTF-8)."""
    payload = json.dumps([f.to_dict() for f in facts], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
