"""The Tune runs of a study: the param space of its grid or search, the Tuner (new, or restored when it can
be), fitting it to the end (or raising ``StudyInterrupted``), and the progress line each unit prints."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ray import tune

from raysem.errors import SpecError
from raysem.service.interrupt import StopOnSigint, StudyInterrupted, interrupt_at
from raysem.service.planning import expand_units
from raysem.service.spec import StudySpec


class Progress(tune.Callback):
    """Prints trials done / total, rate and ETA as units finish (one line per unit, driver-side and cheap)."""

    def __init__(self, total: int):
        self.total, self.start = total, time.time()
        self.per_unit: dict[str, int] = {}
        """Trials each Tune trial (unit) accounts for; a unit retried after a fault counts once."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored Tuner unpickles its callbacks: count from now, as this run's units report."""
        self.__dict__.update(state)
        self.per_unit, self.start = {}, time.time()

    @property
    def done(self) -> int:
        return sum(self.per_unit.values())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.per_unit[trial.trial_id] = int(result.get("trials_run", 0) + result.get("trials_skipped", 0))
        failed = int(result.get("trials_failed", 0))
        elapsed = time.time() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - self.done) / rate:,.0f}s" if rate > 0 else "?"
        note = f", {failed} failed in this unit" if failed else ""
        print(
            f"[raysem] trials {self.done}/{self.total}  {rate * 3600:,.0f}/h  ETA {eta}{note}",
            file=sys.stderr,
            flush=True,
        )
        unit = trial.config.get("unit", trial.config)
        interrupt_at(unit.get("phase") or ("search" if "point" in trial.config else "grid"))


def param_space_of(spec: StudySpec) -> tuple[dict[str, Any], Any, int]:
    """Tune's param space, search algorithm and num_samples for the spec's search."""
    if spec.search.algorithm == "grid":
        return {"unit": tune.grid_search(expand_units(spec))}, None, spec.search.num_samples
    dims = {}
    for name, dim in spec.sweep.items():
        if dim.choice is not None:
            dims[name] = tune.choice(dim.choice)
        elif dim.uniform is not None:
            dims[name] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            dims[name] = tune.loguniform(*dim.loguniform)
        elif dim.randint is not None:
            dims[name] = tune.randint(*dim.randint)
    everything = list(range(spec.sampling.n_for(spec.sampling.k)))
    if spec.search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Seeded, so that a search started anew (its Tune run stopped before saving any state) draws the same points.
        searcher = BasicVariantGenerator(random_state=spec.sampling.seed, max_concurrent=spec.max_concurrent)
        return {"point": dims, "samplings": everything}, searcher, spec.search.num_samples
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=spec.objective, mode=spec.search.mode, seed=spec.sampling.seed)
    return {"point": dims, "samplings": everything}, searcher, spec.search.num_samples


def make_tuner(
    spec: StudySpec,
    trainable: Any,
    folder: Path,
    param_space: dict[str, Any],
    searcher: Any,
    num_samples: int,
    progress: Progress,
    resume: bool,
) -> tune.Tuner:
    """The Tuner of one Tune run in ``folder`` (its name under the storage path): restored when resuming
    and restorable, else new with the spec's concurrency and failure policy.

    A restored Tune run keeps the trials it was created with, so resuming after the spec's grid changed
    (γ = 2 added, more samplings), or when the folder has no record of its trials, starts a new Tune run
    instead, whose trials already in MLflow are skipped; a changed search cannot be resumed and is refused."""
    stamp = folder / "raysem-trials.sha1"
    shape = json.dumps(
        {
            "space": param_space
            if searcher is None
            else spec.model_dump(include={"sweep", "search", "sampling", "exclude"}),
            "num_samples": num_samples,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha1(shape.encode()).hexdigest()
    if resume and restorable(folder):
        same = stamp.is_file() and stamp.read_text() == digest
        if same or (searcher is not None and not stamp.is_file()):
            return tune.Tuner.restore(
                str(folder), trainable, resume_unfinished=True, resume_errored=True, param_space=param_space
            )
        if searcher is not None:
            raise SpecError(
                f"{spec.name}: the sweep, search or sampling changed since the interrupted run in {folder}; "
                "a search resumes only as it started (start a new study name for the new search)"
            )
        print(
            f"raysem: {folder.name}: the spec's trials changed since the interrupted run (or it kept no record of them); "
            "starting a new Tune run (trials already in MLflow are skipped)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            reuse_actors=True,
            search_alg=searcher,
            # a random search's variant generator limits its own concurrency (Tune ignores this one for it)
            max_concurrent_trials=None if spec.search.algorithm == "random" else spec.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures, fail_fast=spec.failure.fail_fast),
            callbacks=[progress],
            verbose=0,
        ),
    )


def restorable(folder: Path) -> bool:
    """Whether ``folder`` holds a Tune run that saved its state. A Tuner pickles itself (without its
    param space) as soon as it is made; one stopped before its first experiment checkpoint has no trials
    to restore, and ``Tuner.restore`` would restart it with an empty config."""
    return tune.Tuner.can_restore(str(folder)) and any(folder.glob("experiment_state-*.json"))


def tune_trial_count(param_space: dict[str, Any], num_samples: int) -> int:
    """How many Tune trials a run of ``param_space`` makes: ``num_samples`` per grid point (one grid at most)."""
    grid = param_space.get("unit", {})
    return num_samples * (len(grid["grid_search"]) if isinstance(grid, dict) and "grid_search" in grid else 1)


def fit(tuner: tune.Tuner, expected: int, stop: StopOnSigint) -> tune.ResultGrid:
    """``tuner.fit()``, raising :class:`StudyInterrupted` unless all ``expected`` Tune trials finished: after a
    SIGINT (Tune returns normally when stopped, with the trials it stopped marked TERMINATED like finished
    ones), or when a unit errored past its retries (its trials are not logged; the error is quoted). What
    comes next (a best point, a finished study run) needs every unit."""
    results = None if stop.received else tuner.fit()
    finished = sum(1 for r in results if r.error is None and "trials_run" in r.metrics) if results else 0
    if results is not None and not stop.received and finished >= expected:
        return results
    where = f"the Tune run at {results.experiment_path}" if results else "the study"
    if results is not None and results.num_errors:
        first = str(next(r.error for r in results if r.error is not None)).strip().splitlines()[-1]
        reason = f"{results.num_errors} errored past failure.max_failures, the first with {first}"
    else:
        reason = "SIGINT" if results is None or stop.received else "stopped early (failure.fail_fast?)"
    raise StudyInterrupted(
        f"{where} stopped with {finished} of {expected} Tune trials finished ({reason}). "
        "Every finished trial is logged; rerun with --resume to run the rest."
    )
