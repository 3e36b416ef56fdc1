"""A study's identity: every fixed setting that changes a trial's result, and its fingerprint.

A trial's key is its swept point, set size and sampling *plus* this fingerprint, and a study run under
an existing experiment name refuses a spec whose identity differs from the one recorded there, so that
a changed model, dataset, prompt style, trial setting, filter or precision never finds its trials
"already done". The sweep, the number of samplings and the resources are not part of it: a grid that
grows, more samplings or another cluster resume the same study.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raysem.errors import SpecError
from raysem.models.catalog import EMBEDDED_MODELS
from raysem.service import tracking
from raysem.service.spec import StudySpec

IDENTITY_PARAM = "identity"
"""The study run's param holding its identity (JSON), beside ``fingerprint``."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_revision(model: str) -> str:
    """What pins a model's weights: the embedded model's GGUF sha256; for a local folder, the sha256 of
    its config.json and of its weight files' names and sizes (hashing many GB of weights on every start
    would cost minutes); for a hub id, the cached snapshot's commit, or "unresolved" before the download."""
    if model in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[model].gguf_sha256
    folder = Path(model).expanduser()
    if folder.is_dir():
        digest = hashlib.sha256()
        config = folder / "config.json"
        digest.update(config.read_bytes() if config.is_file() else b"")
        for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
        return "folder:" + digest.hexdigest()
    from huggingface_hub import constants

    refs = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / "main"
    return refs.read_text().strip() if refs.is_file() else "unresolved"


def study_identity(spec: StudySpec, dataset_sha256: str) -> dict[str, Any]:
    """The settings a study's trials depend on, besides their swept point, set size and sampling."""
    return {
        "model": spec.model
        if spec.model in EMBEDDED_MODELS or not Path(spec.model).expanduser().is_dir()
        else "folder",
        "model_revision": model_revision(spec.model),
        "dataset_sha256": dataset_sha256,
        "data_limit": spec.data_limit,
        **spec.prompting.key(),
        "sampling_seed": spec.sampling.seed,
        "confirm_seed": spec.search.confirm.seed if spec.search.confirm else None,
        "trial": spec.trial_config().model_dump(mode="json"),
        "filter": spec.filter.identity(),
        "precision": spec.precision,
    }


def fingerprint(identity: dict[str, Any]) -> str:
    """A short, stable digest of an identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {
            k: v
            for key, item in value.items()
            for k, v in _flat(item, f"{prefix}.{key}" if prefix else str(key)).items()
        }
    return {prefix: value}


def identity_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields in which two identities differ, each as ``field: recorded -> current``."""
    old, new = _flat(recorded), _flat(current)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    ]


def resolve_identity(
    spec: StudySpec, uri: str, identity: dict[str, Any], new_experiment: bool
) -> tuple[StudySpec, str | None]:
    """The spec to run and the fingerprint its trial keys carry, after comparing its identity with the one
    recorded on every study run of its experiment: another identity is refused (SpecError naming the changed
    fields), or with ``new_experiment`` the study runs as ``<name>-<fingerprint>`` in an experiment of that
    name. An experiment whose study runs recorded no identity (made before identities) keeps its old keys."""
    fp = fingerprint(identity)
    try:
        tracking.check_reachable(uri)
        recorded = tracking.study_identities(uri, spec.experiment, IDENTITY_PARAM)
    except tracking.TrackingUnavailable:
        return spec, fp  # the keys still carry the fingerprint: nothing of another identity is skipped
    if recorded and all(value is None for *_, value in recorded):
        print(
            f"raysem: experiment {spec.experiment!r} was begun before study identities were recorded; its trials keep their keys"
        )
        return spec, None
    for run_id, name, value in recorded:
        if value is None or fingerprint(json.loads(value)) == fp:
            continue
        if new_experiment:
            suffix = f"-{fp[:8]}"
            renamed = spec.model_copy(
                update={
                    "name": spec.name + suffix,
                    "tracking": spec.tracking.model_copy(update={"experiment": spec.experiment + suffix}),
                }
            )
            print(
                f"raysem: the spec differs from study run {name}; running it as study {renamed.name} in experiment {renamed.experiment!r}"
            )
            return resolve_identity(renamed, uri, identity, False)
        changes = "; ".join(identity_changes(json.loads(value), identity))
        raise SpecError(
            f"{spec.name}: experiment {spec.experiment!r} holds study run {name} ({run_id}) of another identity; "
            f"changed: {changes}. Its trials would be skipped as done: give the study a new name, or pass --new-experiment"
        )
    return spec, fp
