"""Target-distance tables: the base model's answers and target distances for every fact of a dataset.

One row per fact with the fields of ``raysem.semantics.evaluate.base_records`` (fact_id, y_old, y_old_raw,
dist_old, target_tokens, prompt_tokens, y_old_empty, locality_base) plus the prompt and target.
Tables are Parquet files in ``cache_dir("distances")``, keyed by a hash of the model, the dataset
(its sha256 and the facts actually used), the limit, the decoding settings, the dtype the model decodes in
and the raysem version, so a second request reads the file instead of decoding again. ``distance_table``
computes in-process; ``distance_table_ray`` computes the same table as a Ray Data job with a pool of
model-holding actors, each on the resources (and the GPU) a study's unit reserves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import raysem
from raysem.data.facts import Fact, FactSet, facts_sha256
from raysem.models.catalog import EMBEDDED_MODELS
from raysem.models.device import assigned_device
from raysem.models.loader import LoadedModel, load_model
from raysem.models.prompts import Prompting
from raysem.paths import cache_dir
from raysem.semantics.evaluate import BaseRecord, base_records
from raysem.semantics.metrics import is_sentence_preface

BASE_FIELDS = (
    "fact_id",
    "y_old",
    "y_old_raw",
    "dist_old",
    "target_tokens",
    "prompt_tokens",
    "y_old_empty",
    "locality_base",
)
COLUMNS = ("fact_id", "prompt", "target", *BASE_FIELDS[1:])
DECODING = {
    "strategy": "greedy",
    "answer_max_new_tokens": "target tokens",
    "locality_max_new_tokens": "reference answer tokens",
    "prompt": "chat template when the tokenizer has one",
    "distance": "1 - cos of mean input-embedding rows",
}
"""The decoding settings a table depends on (part of its cache key)."""
METADATA_KEY = b"raysem"


# ---------------------------------------------------------------------------------------------
# Keys and files
# ---------------------------------------------------------------------------------------------


def model_identity(model: str | LoadedModel) -> str:
    """What names a model in a cache key: embedded names and hub ids as given, local folders absolute."""
    name = model.name if isinstance(model, LoadedModel) else model
    if name in EMBEDDED_MODELS:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def resolve_facts(dataset: str | Path | FactSet | Sequence[Fact], limit: int | None = None) -> FactSet:
    """A dataset name or path (loaded with ``raysem.data.datasets.load_facts``), a ``FactSet`` or a list of facts,
    cut to the first ``limit`` facts."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if isinstance(dataset, (str, Path)):
        from raysem.data.datasets import load_facts

        return load_facts(dataset, limit=limit)
    if isinstance(dataset, FactSet):
        facts = dataset.facts[:limit]
        return FactSet(
            name=dataset.name, format=dataset.format, facts=facts, sha256=dataset.sha256 or facts_sha256(facts)
        )
    facts = list(dataset)[:limit]
    return FactSet(name="facts", format="facts", facts=facts, sha256=facts_sha256(facts))


def _require_facts(facts: FactSet) -> FactSet:
    if not facts.facts:
        raise ValueError(f"dataset {facts.name!r} has no facts to compute distances for")
    return facts


def prompting_of(model: str | LoadedModel, prompting: Prompting | None = None) -> Prompting:
    """The prompting a table is computed under: a loaded model's own, else ``prompting`` (default: raysem's)."""
    if isinstance(model, LoadedModel):
        if prompting is not None and prompting != model.prompting:
            raise ValueError(f"prompting {prompting} differs from the loaded model's {model.prompting}")
        return model.prompting
    return prompting or Prompting()


def dtype_of(model: str | LoadedModel, dtype: torch.dtype) -> str:
    """The dtype a table is decoded in: a loaded model's own, else ``dtype``, by name (``bfloat16``)."""
    found = next(model.model.parameters()).dtype if isinstance(model, LoadedModel) else dtype
    return str(found).removeprefix("torch.")


def table_key(
    model: str | LoadedModel, facts: FactSet, prompting: Prompting | None = None, dtype: torch.dtype = torch.float32
) -> str:
    """sha256 of (model, prompt style and answer budget, dataset sha256, the facts used, their count,
    decoding settings, raysem version, and the dtype when it is not float32: float32 tables keep their keys)."""
    name = dtype_of(model, dtype)
    payload = {
        **({"dtype": name} if name != "float32" else {}),
        "model": model_identity(model),
        **prompting_of(model, prompting).key(),
        "dataset_sha256": facts.sha256,
        "facts_sha256": facts_sha256(facts.facts),
        "limit": len(facts.facts),
        "decoding": DECODING,
        "version": raysem.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "x"


def table_path(
    model: str | LoadedModel, facts: FactSet, prompting: Prompting | None = None, dtype: torch.dtype = torch.float32
) -> Path:
    """Where the table of ``facts`` under ``model`` (its prompting, its dtype) lives in the cache."""
    name = Path(model_identity(model)).name
    key = table_key(model, facts, prompting, dtype)[:16]
    return cache_dir("distances") / f"{_slug(facts.name)}-{_slug(name)}-{key}.parquet"


def _metadata(
    model: str | LoadedModel,
    facts: FactSet,
    prompting: Prompting | None,
    seconds: float,
    how: str,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    return {
        "key": table_key(model, facts, prompting, dtype),
        "dtype": dtype_of(model, dtype),
        "model": model_identity(model),
        **prompting_of(model, prompting).key(),
        "dataset": facts.name,
        "dataset_format": facts.format,
        "dataset_sha256": facts.sha256,
        "facts": len(facts.facts),
        "decoding": DECODING,
        "version": raysem.__version__,
        "seconds": round(seconds, 3),
        "computed_by": how,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_table(frame: pd.DataFrame, path: Path, metadata: dict[str, Any]) -> Path:
    """Write a table atomically (temporary file, then rename) with raysem's metadata in the schema."""
    table = pa.Table.from_pandas(frame[list(COLUMNS)], preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_distance_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by raysem; ``df.attrs["raysem"]`` holds how it was made."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distance table {path} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a Parquet distance table: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a raysem distance table: missing columns {missing}")
    frame = table.select(list(COLUMNS)).to_pandas()
    frame["locality_base"] = [[str(x) for x in row] for row in frame["locality_base"]]
    meta = (table.schema.metadata or {}).get(METADATA_KEY)
    frame.attrs["raysem"] = json.loads(meta) if meta else {}
    return frame


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def table_rows(lm: LoadedModel, facts: Sequence[Fact], batch_size: int = 32) -> list[dict[str, Any]]:
    """Table rows (base record + prompt and target) for ``facts``, in their order."""
    return [
        {"prompt": f.prompt, "target": f.target, **record}
        for f, record in zip(facts, base_records(lm, facts, batch_size))
    ]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype(
        {"dist_old": "float64", "target_tokens": "int64", "prompt_tokens": "int64", "y_old_empty": "bool"}
    )


def batch_order(facts: Sequence[Fact]) -> list[int]:
    """Fact indices ordered so that facts batched together decode for similar numbers of steps.

    A batch decodes as many tokens as its longest budget (the locality reference answers dominate:
    ZsRE's run to 125 tokens), so facts are grouped by the length of those answers, then of the
    target and of the prompt (characters as a proxy for tokens).
    """

    def key(i: int) -> tuple[int, int, int]:
        fact = facts[i]
        return (max((len(p.answer) for p in fact.locality), default=0), len(fact.target), len(fact.prompt))

    return sorted(range(len(facts)), key=key)


def _compute_in_process(lm: LoadedModel, facts: Sequence[Fact], batch_size: int, progress: bool) -> pd.DataFrame:
    """Rows computed in chunks of ``batch_size`` facts (see ``batch_order``), with a progress bar."""
    order = batch_order(facts)
    rows: list[dict[str, Any] | None] = [None] * len(facts)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("target distances", total=len(facts))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, row in zip(chunk, table_rows(lm, [facts[i] for i in chunk], batch_size)):
                rows[i] = row
            bar.advance(task, len(chunk))
    return _frame([r for r in rows if r is not None])


def distance_table(
    model: str | LoadedModel,
    dataset: str | Path | FactSet | Sequence[Fact],
    *,
    limit: int | None = None,
    batch_size: int = 32,
    refresh: bool = False,
    progress: bool = True,
    prompting: Prompting | None = None,
) -> tuple[pd.DataFrame, Path]:
    """The target-distance table of ``dataset`` under ``model`` (a name/path, loaded here in float32 on the
    CPU, or an already loaded base model on its own device and dtype) and ``prompting`` (a loaded model's
    own), read from the cache when present (unless ``refresh``), computed in-process otherwise."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    facts = _require_facts(resolve_facts(dataset, limit))
    prompting = prompting_of(model, prompting)
    path = table_path(model, facts, prompting)
    if path.is_file() and not refresh:
        return load_distance_table(path), path
    start = time.perf_counter()
    lm = model if isinstance(model, LoadedModel) else load_model(model, prompting=prompting)
    frame = _compute_in_process(lm, facts.facts, batch_size, progress)
    write_table(frame, path, _metadata(lm, facts, prompting, time.perf_counter() - start, "in-process"))
    return load_distance_table(path), path


def base_lookup(frame: pd.DataFrame) -> dict[str, BaseRecord]:
    """The base-model record of every fact, keyed by fact id (what ``evaluate_facts`` takes as ``base``)."""
    out: dict[str, BaseRecord] = {}
    for row in frame.itertuples(index=False):
        out[str(row.fact_id)] = {
            "fact_id": str(row.fact_id),
            "y_old": str(row.y_old),
            "y_old_raw": str(row.y_old_raw),
            "dist_old": float(row.dist_old),
            "target_tokens": int(row.target_tokens),
            "prompt_tokens": int(row.prompt_tokens),
            "y_old_empty": bool(row.y_old_empty),
            "locality_base": [str(x) for x in row.locality_base],
        }
    return out


def summary(frame: pd.DataFrame) -> dict[str, Any]:
    """count (facts), mean / std (population) / min / max of the defined target distances, empty
    (facts without a distance: the base model gave an empty answer), preface (y_old starts like a
    sentence, ``metrics.is_sentence_preface``) and train_tokens (mean prompt + target tokens, what one
    training sequence costs)."""
    dist = frame["dist_old"].to_numpy(dtype=np.float64)
    defined = dist[~np.isnan(dist)]
    stats = (
        {
            "mean": float(defined.mean()),
            "std": float(defined.std()),
            "min": float(defined.min()),
            "max": float(defined.max()),
        }
        if len(defined)
        else dict.fromkeys(("mean", "std", "min", "max"), math.nan)
    )
    preface = sum(is_sentence_preface(a, t) for a, t in zip(frame["y_old"], frame["target"]))
    tokens = float((frame["prompt_tokens"] + frame["target_tokens"]).mean()) if len(frame) else math.nan
    return {
        "count": int(len(dist)),
        **stats,
        "empty": int(len(dist) - len(defined)),
        "preface": int(preface),
        "train_tokens": tokens,
    }


# ---------------------------------------------------------------------------------------------
# Ray Data job
# ---------------------------------------------------------------------------------------------


class BaseRecordsActor:
    """Ray Data callable class: loads the model once, on the device Ray assigned it (a reserved GPU that CUDA
    cannot see is an error) and in ``dtype``, then turns batches of facts into table rows."""

    def __init__(self, model: str, batch_size: int, prompting: Prompting, dtype: torch.dtype) -> None:
        import ray

        device = assigned_device(ray.get_gpu_ids())
        self.lm = load_model(model, dtype=dtype, device=device, prompting=prompting)
        self.batch_size = batch_size

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        facts = [Fact.from_dict(json.loads(text)) for text in batch["fact"]]
        frame = _frame(table_rows(self.lm, facts, self.batch_size))
        frame["locality_base"] = [json.dumps(list(x)) for x in frame["locality_base"]]
        frame.insert(0, "index", batch["index"].to_numpy())
        return frame


def distance_table_ray(
    model: str,
    dataset: str | Path | FactSet | Sequence[Fact],
    *,
    limit: int | None = None,
    batch_size: int = 32,
    actors: int = 1,
    refresh: bool = False,
    prompting: Prompting | None = None,
    resources: dict[str, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[pd.DataFrame, Path]:
    """``distance_table`` as a Ray Data job: ``from_items`` of the facts, ``map_batches`` over a pool of
    ``actors`` model-holding actors, rows gathered and written to the same cache file. Each actor reserves
    ``resources`` (Ray's names: ``CPU``, ``GPU`` and custom ones; default one CPU) and decodes in ``dtype``;
    the driver never loads the model.

    Uses the Ray runtime already initialised, or ``ray.init()`` (``RAY_ADDRESS`` when set).
    """
    import ray

    facts = _require_facts(resolve_facts(dataset, limit))
    prompting = prompting_of(model, prompting)
    path = table_path(model, facts, prompting, dtype)
    if path.is_file() and not refresh:
        return load_distance_table(path), path
    if not ray.is_initialized():
        ray.init()
    start = time.perf_counter()
    items = [{"index": i, "fact": json.dumps(facts.facts[i].to_dict())} for i in batch_order(facts.facts)]
    wanted = dict(resources or {"CPU": 1})
    rows = (
        ray.data.from_items(items)
        .map_batches(
            BaseRecordsActor,
            fn_constructor_kwargs={"model": model, "batch_size": batch_size, "prompting": prompting, "dtype": dtype},
            batch_size=batch_size,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=wanted.pop("CPU", 0),
            num_gpus=wanted.pop("GPU", 0),
            resources=wanted or None,
        )
        .to_pandas()
    )
    if len(rows) != len(facts.facts):
        raise RuntimeError(f"the Ray Data job returned {len(rows)} rows for {len(facts.facts)} facts")
    rows = rows.sort_values("index").reset_index(drop=True)
    rows["locality_base"] = [json.loads(text) for text in rows["locality_base"]]
    frame = _frame(rows[list(COLUMNS)].to_dict("records"))
    how = f"ray-data ({actors} actors of {resources or {'CPU': 1}})"
    write_table(frame, path, _metadata(model, facts, prompting, time.perf_counter() - start, how, dtype))
    return load_distance_table(path), path
