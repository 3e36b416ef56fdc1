"""Resuming an interrupted search-then-confirm study: an Optuna search interrupted at each boundary, a random
search at every boundary in turn, and the search job entry point interrupted mid-search."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from raysem.service.interrupt import INTERRUPT_AT, StudyInterrupted
from raysem.service.planning import count_trials
from raysem.service.spec import load_spec
from raysem.service.study import run_study

from conftest import ensure_ray, tiny_spec, trial_runs


@pytest.fixture()
def local_ray(ray_runtime):
    """The shared local Ray (``conftest.ray_runtime``)."""


BOUNDARIES = ("search:1", "search-end", "confirm:1", "end")
"""Where a search-then-confirm study is interrupted: during the search, between the search and its
confirmation, during the confirmation, and before the study run is marked FINISHED."""


def searched_spec(tmp_path: Path, model_dir: Path, algorithm: str):
    """A γ search (SGD, so that γ acts on single facts) of two points, confirmed on two fresh samplings:
    two search units, then the best point and its γ = 0 baseline, one packed unit each."""
    return load_spec(
        tiny_spec(
            tmp_path,
            model_dir,
            f"searched-{algorithm}",
            sampling={"k": 1, "n_samplings": 1, "seed": 0},
            trial={"method": "lora", "steps": 2, "lr": 1e-3, "optimizer": "sgd"},
            sweep={"gamma": {"uniform": [0.0, 2.0]}},
            pack_size=2,
            report=False,
            search={"algorithm": algorithm, "num_samples": 2, "confirm": {"n_samplings": 2, "seed": 5}},
        )
    )


def study_state(spec) -> tuple[list[str], str]:
    """The study's trial keys (sorted, duplicates kept) and its parent run's status; every trial run FINISHED."""
    client, runs = trial_runs(spec.tracking.uri, spec.experiment)
    assert {r.info.status for r in runs} == {"FINISHED"}
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status
    return sorted(r.data.tags["raysem.trial_key"] for r in runs), parent


def confirmed_point(spec) -> dict[str, float]:
    """The point the study confirmed (its confirmation's point other than the γ = 0 baseline), read back from MLflow."""
    confirm = [r for r in trial_runs(spec.tracking.uri, spec.experiment)[1] if r.data.params["phase"] == "confirm"]
    (gamma,) = {float(r.data.params["gamma"]) for r in confirm} - {0.0}
    return {"gamma": gamma}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, _ray_session):
    """Per search algorithm: the trial keys and the confirmed point of the study run without interruption up to
    its last boundary (``end``: every search and confirmation trial done, the study run not yet FINISHED), and
    its spec, which the ``end`` case resumes."""
    ensure_ray()
    out = {}
    for algorithm in ("optuna", "random"):
        spec = searched_spec(tmp_path_factory.mktemp(algorithm), tiny_model_dir, algorithm)
        with pytest.MonkeyPatch.context() as env, pytest.raises(StudyInterrupted, match="rerun with --resume"):
            env.setenv(INTERRUPT_AT, "end")
            run_study(spec)
        keys, parent = study_state(spec)
        assert parent == "KILLED" and len(keys) == len(set(keys)) == count_trials(spec) == 2 + 2 * 2
        out[algorithm] = keys, confirmed_point(spec), spec
    return out


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_an_optuna_search_interrupted_at_any_boundary_resumes_to_the_same_study(
    tmp_path, tiny_model_dir, local_ray, uninterrupted, monkeypatch, boundary
):
    """Interrupted (SIGINT, through the driver's test hook) at one boundary, then resumed: every search and
    confirmation trial exactly once, the same confirmed point as without the interruption, the study FINISHED.
    (A confirmation Tune run stopped before its first checkpoint was restored with an empty config; a search
    unit run again after the interruption reported NaN for its done trials, which moved the best point.)
    The ``end`` case resumes the reference study itself, which stopped there."""
    reference, point, spec = uninterrupted["optuna"]
    if boundary != "end":
        spec = searched_spec(tmp_path, tiny_model_dir, "optuna")
        monkeypatch.setenv(INTERRUPT_AT, boundary)
        with pytest.raises(StudyInterrupted, match="rerun with --resume"):
            run_study(spec)
        assert INTERRUPT_AT not in os.environ, "the hook fired"
    keys, parent = study_state(spec)
    assert parent == "KILLED" and len(keys) < len(reference) + (boundary == "end")

    outcome = run_study(spec, resume=True)
    assert study_state(spec) == (reference, "FINISHED")
    assert outcome.best_point == point
    assert outcome.ran == len(reference) - len(keys)


def test_a_random_search_interrupted_at_every_boundary_in_turn_resumes_to_the_same_study(
    tmp_path, tiny_model_dir, local_ray, uninterrupted, monkeypatch
):
    """The same for a (seeded) random search, interrupted at each boundary in turn, resumed after each."""
    spec = searched_spec(tmp_path, tiny_model_dir, "random")
    for i, boundary in enumerate(BOUNDARIES):
        monkeypatch.setenv(INTERRUPT_AT, boundary)
        with pytest.raises(StudyInterrupted, match="rerun with --resume"):
            run_study(spec, resume=i > 0)
        assert INTERRUPT_AT not in os.environ and study_state(spec)[1] == "KILLED", boundary
    outcome = run_study(spec, resume=True)
    assert study_state(spec) == (uninterrupted["random"][0], "FINISHED")
    assert outcome.best_point == uninterrupted["random"][1] and outcome.ran == 0


def test_a_search_job_resumes_then_confirms_on_fresh_samplings(
    tmp_path, tiny_model_dir, local_ray, monkeypatch, capsys
):
    """The job entry point: an Optuna γ × λ search of filtered 3-fact sets, interrupted mid-search, exits 130
    and resumes; the best point and the baseline (γ = 0, λ = 0) run once on confirmation samplings, paired;
    a changed search is refused on resume; the report has a sweep section with the confirmed difference."""
    from raysem.report.build import build_report
    from raysem.service.job import job_main

    path = tiny_spec(
        tmp_path,
        tiny_model_dir,
        "searched",
        sampling={"k": 3, "n_samplings": 1, "seed": 0},
        sweep={"gamma": {"uniform": [0.0, 2.0]}, "filter_lambda": {"uniform": [0.0, 4.0]}},
        filter={"filter_mode": "filter", "replace": 0.5},
        report=False,
        search={"algorithm": "optuna", "num_samples": 3, "confirm": {"n_samplings": 2, "seed": 5}},
    )
    spec = load_spec(path)
    assert spec.objective == "trained_accuracy"
    monkeypatch.setenv(INTERRUPT_AT, "search:2")
    assert job_main(argv=["--spec", str(path)]) == 130
    assert "rerun with --resume" in capsys.readouterr().err
    client, runs = trial_runs(spec.tracking.uri, spec.experiment)
    assert len(runs) == 2
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "KILLED"

    assert job_main(argv=["--spec", str(path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "best point by trained_accuracy" in out and "confirmed with the baseline on 2 fresh samplings" in out
    runs = trial_runs(spec.tracking.uri, spec.experiment)[1]
    keys = [r.data.tags["raysem.trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) and all(r.info.status == "FINISHED" for r in runs)
    phases = pd.Series([r.data.params["phase"] for r in runs]).value_counts().to_dict()
    assert phases == {"search": 3 * 1, "confirm": 2 * 2}
    confirm = [r for r in runs if r.data.params["phase"] == "confirm"]
    points = {(r.data.params["gamma"], r.data.params["filter_lambda"]) for r in confirm}
    assert ("0.0", "0.0") in points and len(points) == 2
    assert sorted(r.data.params["sampling"] for r in confirm) == ["0", "0", "1", "1"]
    assert all("trained_accuracy" in r.data.metrics and "retained_accuracy" in r.data.metrics for r in runs)
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "FINISHED"

    assert job_main(argv=["--spec", str(path), "--resume", "--set", "search.num_samples=6"]) == 2
    assert "a search resumes only as it started" in capsys.readouterr().err

    summary = build_report(
        spec.experiment, tracking_uri=spec.tracking.uri, out_dir=tmp_path / "report", log_to_mlflow=False
    )
    assert "sweep" in summary.sections and "sweep" in summary.figures
    text = summary.markdown.read_text()
    assert "Confirmation: trained_accuracy" in text and "Δ best − baseline" in text
