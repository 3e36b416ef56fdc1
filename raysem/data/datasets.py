"""Loading knowledge datasets (ZsRE, COUNTERFACT, KnowEdit, the embedded world facts) into ``FactSet``s.

The format of a file is detected from the keys of its first record; every record is then validated,
and any problem raises ``DatasetError`` naming the file, the record index and the field. Text fields
are stripped of surrounding whitespace (several ZsRE targets carry a leading space). Fields no metric
reads (subject, true answer, locality reference answers) may be empty or missing: the record is loaded
with one ``IncompleteRecordWarning`` per file and field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from raysem.data.facts import DatasetError, Fact, FactSet, Probe, facts_sha256
from raysem.paths import cache_dir

DATASET_NAMES = ("zsre", "counterfact", "knowedit", "worldfacts", "worldfacts-cf")

# Files a named dataset resolves to, relative to a data root, in order of preference.
NAMED_FILES: dict[str, tuple[str, ...]] = {
    "zsre": ("zsre/zsre_mend_eval_1037.json", "zsre/zsre_mend_eval.json"),
    "counterfact": ("counterfact/counterfact-edit.json", "counterfact/counterfact.json"),
}
_SPLITS = ("train", "val", "eval", "edit", "test", "dev")
_NQ_PREFIX = "nq question:"
_MISSING = object()

Key = str | int

# Why a field may be blank, by its role: no metric reads it. A locality probe's reference answer only
# sizes its answer budget (``LoadedModel.answer_budget``), which is 1 token for an empty answer.
_BLANK_REASONS = {
    "locality": "locality (Eq. 8) compares with the base model's answer and does not read it; "
    "the probe's answer budget falls to 1 token",
    "neighborhood": "it is the true answer and the neighborhood (locality) probes' reference answer, which no "
    "metric reads (Eq. 8 compares with the base model's answer); their answer budget falls to 1 token",
    "true_answer": "no metric reads the true answer (`raysem data show` only displays it)",
    "subject": "no metric reads the subject",
    "relation": "no metric reads the relation",
}


class SkippedRecordWarning(UserWarning):
    """Records left out by ``load_facts(..., skip_invalid=True)``; the message lists them and why."""


class IncompleteRecordWarning(UserWarning):
    """Records loaded with an empty or missing field that no metric reads; one per file and field, with counts."""


# ---------------------------------------------------------------------------------------------
# Locating files
# ---------------------------------------------------------------------------------------------


def repo_root() -> Path | None:
    """The source checkout holding this package, when it is run from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def data_roots() -> list[Path]:
    """Folders searched for named datasets: ``$RAYSEM_DATA``, ``<repo>/../shared/data``, the raysem cache."""
    roots = []
    if os.environ.get("RAYSEM_DATA"):
        roots.append(Path(os.environ["RAYSEM_DATA"]).expanduser())
    root = repo_root()
    if root is not None:
        roots.append(root.parent / "shared" / "data")
    roots.append(cache_dir("data"))
    return roots


def resolve_dataset(name: str) -> Path:
    """The file a dataset name stands for (``zsre``, ``counterfact``, ``knowedit``)."""
    if name == "knowedit":
        return _resolve_knowedit()
    if name not in NAMED_FILES:
        raise DatasetError(f"unknown dataset name {name!r}; accepted names: {', '.join(DATASET_NAMES)}")
    searched = [r / rel for r in data_roots() for rel in NAMED_FILES[name]]
    for path in searched:
        if path.is_file():
            return path
    raise DatasetError(
        f"dataset {name!r} not found; looked for: {', '.join(map(str, searched))}. "
        f"Run `raysem data fetch {name}` or pass a file path."
    )


def _resolve_knowedit() -> Path:
    folders = [r / "knowedit" for r in data_roots()]
    found = sorted(p for f in folders if f.is_dir() for p in f.glob("*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            "KnowEdit is not downloaded by raysem; pass the path of a KnowEdit JSON file "
            f"(e.g. ZsRE-test-all.json) or put exactly one in one of: {', '.join(map(str, folders))}"
        )
    raise DatasetError(f"several KnowEdit files found ({', '.join(map(str, found))}); pass the one to use as a path")


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def load_facts(
    source: str | Path,
    *,
    limit: int | None = None,
    name: str | None = None,
    skip_invalid: bool = False,
) -> FactSet:
    """Load a dataset by name (one of ``DATASET_NAMES``) or from a JSON file.

    ``limit`` keeps the first records only; ``name`` overrides the set's name (the prefix of fact
    ids); ``skip_invalid`` leaves out invalid records with one ``SkippedRecordWarning`` instead of
    raising.
    """
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0, got {limit}")
    if isinstance(source, str) and source in ("worldfacts", "worldfacts-cf"):
        return _load_worldfacts(source, limit)
    if isinstance(source, str) and source in DATASET_NAMES:
        return read_facts_file(resolve_dataset(source), name=name or source, limit=limit, skip_invalid=skip_invalid)
    path = Path(source)
    if not path.exists():
        raise DatasetError(
            f"{str(source)!r} is neither a dataset name ({', '.join(DATASET_NAMES)}) nor an existing file"
        )
    return read_facts_file(path, name=name, limit=limit, skip_invalid=skip_invalid)


def _load_worldfacts(source: str, limit: int | None) -> FactSet:
    from raysem.data.worldfacts import build_worldfacts

    facts = build_worldfacts(counterfactual=source == "worldfacts-cf")
    return FactSet(name=source, format="worldfacts", facts=facts[:limit], sha256=facts_sha256(facts))


def read_facts_file(
    path: Path, *, name: str | None = None, limit: int | None = None, skip_invalid: bool = False
) -> FactSet:
    """Read, detect and validate one dataset file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    data = path.read_bytes()
    records = _parse_json_list(path, data)
    if not records:
        raise DatasetError(f"{path}: contains no records")
    fmt = detect_format(path, records[0])
    name = name or path.stem
    split = _split_from_name(path.stem)
    parse = _PARSERS[fmt]
    facts: list[Fact] = []
    skipped: list[str] = []
    blanks: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for index, raw in enumerate(records[:limit]):
        try:
            record = _Record(path, index, raw)
            fact = parse(record, name, split)
            if fact.id in seen:
                raise record.error(("case_id",), f"duplicate fact id {fact.id!r}")
        except DatasetError as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc).removeprefix(f"{path}: "))
            continue
        seen.add(fact.id)
        facts.append(fact)
        for blank in record.blanks:
            blanks[blank].append(index)
    if skipped:
        shown = "; ".join(skipped[:20]) + (f"; ... and {len(skipped) - 20} more" if len(skipped) > 20 else "")
        warnings.warn(SkippedRecordWarning(f"{path}: skipped {len(skipped)} invalid record(s): {shown}"), stacklevel=3)
        if not facts:
            raise DatasetError(f"{path}: no valid records")
    for message in _blank_messages(path, blanks):
        warnings.warn(IncompleteRecordWarning(message), stacklevel=3)
    return FactSet(name=name, format=fmt, facts=facts, sha256=hashlib.sha256(data).hexdigest())


def _blank_messages(path: Path, blanks: dict[tuple[str, str], list[int]]) -> list[str]:
    """One warning message per (role, field label), from the record index of each blank field."""
    messages = []
    for (role, label), indices in blanks.items():
        records = f"{len(set(indices))} record(s)"
        where = f"{len(indices)} locality probe(s) in {records}" if role == "locality" else records
        messages.append(f"{path}: {where} have an empty or missing {label}; {_BLANK_REASONS[role]}")
    return messages


# ---------------------------------------------------------------------------------------------
# JSON and format detection
# ---------------------------------------------------------------------------------------------


def _parse_json_list(path: Path, data: bytes) -> list[Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        index = _failing_record(text)
        where = f"record {index}: " if index is not None else ""
        raise DatasetError(
            f"{path}: {where}invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            + ("" if text.rstrip().endswith("]") else " (the file does not end with ']': it looks truncated)")
        ) from None
    if not isinstance(value, list):
        raise DatasetError(f"{path}: the top level must be a JSON list of records, got {_json_type(value)}")
    return value


def _failing_record(text: str) -> int | None:
    """Index of the list element at which JSON decoding fails, or None when the text is no list."""
    decoder = json.JSONDecoder()

    def after_space(pos: int) -> int:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        return pos

    pos = after_space(0)
    if not text.startswith("[", pos):
        return None
    pos, index = pos + 1, 0
    while True:
        pos = after_space(pos)
        if text.startswith("]", pos):
            return None
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return index
        pos = after_space(pos)
        index += 1
        if not text.startswith(",", pos):
            return index if not text.startswith("]", pos) else None
        pos += 1


def detect_format(path: Path, record: Any) -> str:
    """The dataset format a record's keys identify (not ``worldfacts``, which is never read from a file)."""
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: record 0: expected a JSON object, got {_json_type(record)}")
    keys = set(record)
    if "requested_rewrite" in keys:
        return "counterfact-rome"
    if "src" in keys:
        return "zsre-mend"
    if "locality_prompt" in keys:
        return "counterfact-mend"
    if "prompt" in keys:
        return "knowedit"
    if {"text", "labels"} <= keys:
        return "knowedit-wikibio"
    raise DatasetError(
        f"{path}: record 0: unknown dataset format; keys seen: {', '.join(sorted(keys)) or '(none)'}. "
        "Accepted formats: zsre-mend (src, alt, answers, rephrase, loc, loc_ans, subject), "
        "counterfact-mend (prompt, target_new, ground_truth, rephrase_prompt, locality_prompt, ...), "
        "counterfact-rome (requested_rewrite, paraphrase_prompts, neighborhood_prompts), "
        "knowedit (subject, prompt, target_new, ground_truth, locality, portability), "
        "knowedit-wikibio (text, labels, concept, locality)"
    )


def _split_from_name(stem: str) -> str:
    return next((t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t in _SPLITS), "")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


# ---------------------------------------------------------------------------------------------
# Validated access to one record
# ---------------------------------------------------------------------------------------------


class _Record:
    """One raw record; accessors take a key path and raise errors naming file, record and field."""

    def __init__(self, path: Path, index: int, data: Any) -> None:
        self.path, self.index, self.data = path, index, data
        self.blanks: list[tuple[str, str]] = []  # (role, field label) of optional fields read as blank
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: record {index}: expected a JSON object, got {_json_type(data)}")

    def error(self, keys: tuple[Key, ...], problem: str, value: Any = _MISSING) -> DatasetError:
        label = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(keys))
        message = f"{self.path}: record {self.index}: field '{label}': {problem}"
        if value is not _MISSING:
            shown = json.dumps(value, ensure_ascii=False)
            message += f" (value: {shown if len(shown) <= 80 else shown[:77] + '...'})"
        return DatasetError(message)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, *keys: Key) -> Any:
        node: Any = self.data
        for depth, key in enumerate(keys):
            kind, expected = (list, "a list") if isinstance(key, int) else (dict, "an object")
            if not isinstance(node, kind):
                raise self.error(keys[:depth], f"expected {expected}, got {_json_type(node)}", node)
            if (key >= len(node)) if isinstance(key, int) else (key not in node):
                raise self.error(keys[: depth + 1], "missing")
            node = node[key]  # type: ignore[index]  # a list when key is an int, an object otherwise (checked above)
        return node

    def text(self, *keys: Key) -> str:
        """A non-empty string."""
        value = self.get(*keys)
        if not isinstance(value, str):
            raise self.error(keys, f"expected a string, got {_json_type(value)}", value)
        if not value.strip():
            raise self.error(keys, "is empty", value)
        return value.strip()

    def texts(self, *keys: Key) -> tuple[str, ...]:
        """A list of non-empty strings (a single string counts as a list of one)."""
        value = self.get(*keys)
        if isinstance(value, str):
            return (self.text(*keys),)
        if not isinstance(value, list):
            raise self.error(keys, f"expected a list of strings, got {_json_type(value)}", value)
        return tuple(self.text(*keys, i) for i in range(len(value)))

    def answer(self, *keys: Key) -> str:
        """A string, or the first non-blank string of a (possibly nested) list of accepted answers."""
        value = self.get(*keys)
        while isinstance(value, list):
            index = next((i for i, item in enumerate(value) if not _is_blank(item)), None)
            if index is None:
                raise self.error(keys, "is an empty list" if not value else "holds no answer", value)
            keys, value = (*keys, index), value[index]
        return self.text(*keys)

    def optional_text(self, role: str, *keys: Key) -> str:
        """``text`` of a field no metric reads (``role`` keys ``_BLANK_REASONS``), or "" when it is missing or empty."""
        return "" if self._blank(role, keys) else self.text(*keys)

    def optional_answer(self, role: str, *keys: Key) -> str:
        """``answer`` of a field no metric reads (``role`` keys ``_BLANK_REASONS``), or "" when it is blank."""
        return "" if self._blank(role, keys) else self.answer(*keys)

    def _blank(self, role: str, keys: tuple[Key, ...]) -> bool:
        """Whether a field is missing or blank at every depth (``_is_blank``); noted in ``blanks``."""
        parent = self.get(*keys[:-1])
        value = parent.get(keys[-1]) if isinstance(parent, dict) else self.get(*keys)
        if not _is_blank(value):
            return False
        label = str(keys[-1]) if role == "locality" else ".".join(map(str, keys))
        self.blanks.append((role, label))
        return True

    def case_id(self) -> str:
        if not self.has("case_id"):
            return str(self.index)
        value = self.get("case_id")
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
            raise self.error(("case_id",), "expected an integer or a non-empty string", value)
        return str(value).strip()


def _is_blank(value: Any) -> bool:
    """None, an empty or all-space string, or a list or object holding only blanks, at any depth."""
    if value is None or isinstance(value, str):
        return not (value or "").strip()
    if isinstance(value, (list, dict)):
        return all(_is_blank(item) for item in (value.values() if isinstance(value, dict) else value))
    return False


# ---------------------------------------------------------------------------------------------
# Format parsers: record -> Fact
# ---------------------------------------------------------------------------------------------


def _parse_zsre(rec: _Record, name: str, split: str) -> Fact:
    return Fact(
        id=f"{name}:{rec.index}",
        prompt=rec.text("src"),
        target=rec.text("alt"),
        subject=rec.optional_text("subject", "subject"),
        true_answer=rec.optional_answer("true_answer", "answers") or None,
        rephrasings=(rec.text("rephrase"),),
        locality=(Probe(_strip_nq_prefix(rec.text("loc")), rec.optional_text("locality", "loc_ans")),),
        portability=_zsre_portability(rec),
        source=name,
        split=split,
    )


def _strip_nq_prefix(prompt: str) -> str:
    """ZsRE locality prompts are Natural Questions, stored as ``nq question: <question>``."""
    return prompt[len(_NQ_PREFIX) :].strip() if prompt.startswith(_NQ_PREFIX) else prompt


def _zsre_portability(rec: _Record) -> tuple[Probe, ...]:
    if not rec.has("portability"):
        return ()
    value = rec.get("portability")
    paths: list[tuple[Key, ...]] = (
        [("portability", i) for i in range(len(value))] if isinstance(value, list) else [("portability",)]
    )
    return tuple(Probe(rec.text(*p, "New Question"), rec.text(*p, "New Answer")) for p in paths)


def _parse_counterfact_mend(rec: _Record, name: str, split: str) -> Fact:
    return Fact(
        id=f"{name}:{rec.case_id()}",
        prompt=rec.text("prompt"),
        target=rec.text("target_new"),
        subject=rec.optional_text("subject", "subject"),
        true_answer=rec.optional_answer("true_answer", "ground_truth") or None,
        rephrasings=(rec.text("rephrase_prompt"),),
        locality=(Probe(rec.text("locality_prompt"), rec.optional_answer("locality", "locality_ground_truth")),),
        source=name,
        split=split,
    )


def _parse_counterfact_rome(rec: _Record, name: str, split: str) -> Fact:
    rw = "requested_rewrite"
    subject = rec.text(rw, "subject")
    template = rec.text(rw, "prompt")
    if "{}" not in template:
        raise rec.error((rw, "prompt"), "has no '{}' placeholder for the subject", template)
    true_answer = rec.optional_text("neighborhood", rw, "target_true", "str")
    return Fact(
        id=f"{name}:{rec.case_id()}",
        prompt=template.replace("{}", subject),
        target=rec.text(rw, "target_new", "str"),
        subject=subject,
        true_answer=true_answer or None,
        rephrasings=rec.texts("paraphrase_prompts"),
        locality=tuple(Probe(p, true_answer) for p in rec.texts("neighborhood_prompts")),
        source=name,
        split=split,
        relation=rec.optional_text("relation", rw, "relation_id") if "relation_id" in rec.get(rw) else "",
    )


def _parse_knowedit(rec: _Record, name: str, split: str) -> Fact:
    rephrase_key = next((k for k in ("rephrase_prompt", "rephrase") if rec.has(k)), None)
    return Fact(
        id=f"{name}:{rec.index}",
        prompt=rec.text("prompt"),
        target=rec.text("target_new"),
        subject=rec.optional_text("subject", "subject"),
        true_answer=(rec.optional_answer("true_answer", "ground_truth") or None) if rec.has("ground_truth") else None,
        rephrasings=rec.texts(rephrase_key) if rephrase_key else (),
        locality=_knowedit_probes(rec, "locality"),
        portability=_knowedit_probes(rec, "portability"),
        source=name,
        split=split,
    )


def _parse_knowedit_wikibio(rec: _Record, name: str, split: str) -> Fact:
    """KnowEdit's WikiBio split: a passage (``text``) to continue with the sentence ``labels``, about ``concept``."""
    return Fact(
        id=f"{name}:{rec.index}",
        prompt=rec.text("text"),
        target=rec.text("labels"),
        subject=rec.optional_text("subject", "concept"),
        locality=_knowedit_probes(rec, "locality"),
        source=name,
        split=split,
    )


def _knowedit_probes(rec: _Record, key: str) -> tuple[Probe, ...]:
    """Probes of all groups of ``locality`` / ``portability`` ({group: [{prompt, ground_truth}]}); a locality
    probe's ground truth may be blank (no metric reads it), a portability probe's may not (exact match)."""
    if not rec.has(key):
        return ()
    groups = rec.get(key)
    if not isinstance(groups, dict):
        raise rec.error((key,), f"expected an object of probe groups, got {_json_type(groups)}", groups)
    probes: list[Probe] = []
    for group, items in groups.items():
        if not isinstance(items, list):
            raise rec.error((key, group), f"expected a list of probes, got {_json_type(items)}", items)
        answer = partial(rec.optional_answer, "locality") if key == "locality" else rec.answer
        probes.extend(
            Probe(rec.text(key, group, i, "prompt"), answer(key, group, i, "ground_truth")) for i in range(len(items))
        )
    return tuple(probes)


_PARSERS: dict[str, Callable[[_Record, str, str], Fact]] = {
    "zsre-mend": _parse_zsre,
    "counterfact-mend": _parse_counterfact_mend,
    "counterfact-rome": _parse_counterfact_rome,
    "knowedit": _parse_knowedit,
    "knowedit-wikibio": _parse_knowedit_wikibio,
}
