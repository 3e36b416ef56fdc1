"""Studies on a real local Ray and a real MLflow store: every trial logged once, resources checked first, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, tiny_spec, trial_runs

from raysem.service.spec import load_spec
from raysem.service.study import ResourceError, count_trials, run_study

pytestmark = pytest.mark.slow


def interrupt_after_two_runs(command: list[str], cwd: Path, env: dict[str, str], spec) -> str:
    """Start a study job, interrupt it (SIGINT to its process group) once two trial runs are logged, and
    return its stderr; the job must exit with an error, not carry on as if its Tune run had finished."""
    first = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(trial_runs(spec.tracking.uri, spec.experiment)[1]) < 2:
        time.sleep(0.5)
    assert first.poll() is None, "the study finished before it could be interrupted"
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode != 0, stderr[-3000:]
    return stderr


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_missing_resources_fail_before_any_trial(tmp_path, tiny_model_dir, local_ray):
    spec = load_spec(tiny_spec(tmp_path, tiny_model_dir, "needs-a100", resources={"cpu": 1, "custom": {"A100": 1}}))
    with pytest.raises(ResourceError, match=r"A100.*expect_autoscaling"):
        run_study(spec)
    assert trial_runs(spec.tracking.uri, spec.experiment)[1] == []


def test_study_logs_each_trial_once_with_records(tmp_path, tiny_model_dir, local_ray):
    spec = load_spec(tiny_spec(tmp_path, tiny_model_dir, "tiny-study"))
    outcome = run_study(spec)
    client, runs = trial_runs(outcome.tracking_uri, spec.experiment)
    assert outcome.trials == count_trials(spec) == outcome.ran == 2 * 4 + 2 * 2
    assert len(runs) == outcome.trials
    assert len({r.data.tags["raysem.trial_key"] for r in runs}) == outcome.trials
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == outcome.parent_run_id for r in runs)
    by_k = {"1": 0, "3": 0}
    for run in runs:
        by_k[run.data.params["k"]] += 1
        assert {"accuracy", "generality", "locality", "deviation_rate", "wall_s"} <= set(run.data.metrics)
        records = pd.read_parquet(client.download_artifacts(run.info.run_id, "records/facts.parquet"))
        assert len(records) == int(run.data.params["k"])
        assert run.data.metrics["accuracy"] == pytest.approx(records["exact_match"].mean())
    assert by_k == {"1": 8, "3": 4}
    parent = client.get_run(outcome.parent_run_id).data
    assert (parent.params["trial.lr"], parent.params["trial.steps"], parent.params["sweep.gamma.grid"]) == ("0.001", "2", "[0.0, 1.0]")
    assert (parent.params["trial.optimizer"], parent.params["prompt_style"], parent.params["sampling.k"]) == ("adamw", "fewshot", "1")
    assert parent.tags["raysem.study_kind"] == "quick" and len(parent.tags["raysem.dataset_sha256"]) == 64
    gammas = {(r.data.params["k"], r.data.params["sampling"], r.data.params["seed"]): set() for r in runs}
    for run in runs:
        gammas[(run.data.params["k"], run.data.params["sampling"], run.data.params["seed"])].add(run.data.params["gamma"])
    assert all(g == {"0.0", "1.0"} for g in gammas.values()), "every sampling is paired across γ with the same seed"

    again = run_study(spec)
    assert len(trial_runs(again.tracking_uri, spec.experiment)[1]) == outcome.trials, "finished trials are not redone"
    assert (again.trials, again.ran) == (outcome.trials, 0)

    # γ = 2 added to the grid, then --resume: a restored Tune run would hold only the old grid's trials
    grown = load_spec(tiny_spec(tmp_path, tiny_model_dir, "tiny-study", sweep={"k": {"grid": [1, 3]}, "gamma": {"grid": [0.0, 1.0, 2.0]}}))
    assert run_study(grown, resume=True).ran == outcome.trials // 2
    keys = [r.data.tags["raysem.trial_key"] for r in trial_runs(again.tracking_uri, spec.experiment)[1]]
    assert len(keys) == len(set(keys)) == count_trials(grown) == outcome.trials * 3 // 2


def test_optuna_search_resumes_then_confirms_on_fresh_samplings(tmp_path, tiny_model_dir):
    """An Optuna γ × λ search interrupted mid-search resumes without re-running or duplicating a trial; then
    the best point and the baseline (γ = 0, λ = 0) run once on confirmation samplings, paired; the report
    has a sweep section with the confirmed difference."""
    import ray

    from raysem.report.build import build_report

    ray.shutdown()
    path = tiny_spec(
        tmp_path, tiny_model_dir, "searched", sampling={"k": 3, "n_samplings": 1, "seed": 0}, sweep={
            "gamma": {"uniform": [0.0, 2.0]}, "filter_lambda": {"uniform": [0.0, 4.0]}},
        filter={"filter_mode": "filter", "replace": 0.5}, report=False,
        search={"algorithm": "optuna", "num_samples": 4, "confirm": {"n_samplings": 2, "seed": 5}},
    )  # fmt: skip
    spec = load_spec(path)
    assert spec.objective == "trained_accuracy"
    command = [sys.executable, str(REPO_ROOT / "jobs" / "gamma_lambda_sweep.py"), "--spec", str(path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    stderr = interrupt_after_two_runs(command, tmp_path, env, spec)
    assert "rerun with --resume" in stderr, stderr[-3000:]
    client, runs = trial_runs(spec.tracking.uri, spec.experiment)
    assert len(runs) < count_trials(spec)
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "KILLED"

    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best point by trained_accuracy" in resumed.stdout and "confirmed with the baseline on 2 fresh samplings" in resumed.stdout
    runs = trial_runs(spec.tracking.uri, spec.experiment)[1]
    keys = [r.data.tags["raysem.trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) and all(r.info.status == "FINISHED" for r in runs)
    phases = pd.Series([r.data.params["phase"] for r in runs]).value_counts().to_dict()
    assert phases == {"search": 4 * 1, "confirm": 2 * 2}
    confirm = [r for r in runs if r.data.params["phase"] == "confirm"]
    points = {(r.data.params["gamma"], r.data.params["filter_lambda"]) for r in confirm}
    assert ("0.0", "0.0") in points and len(points) == 2
    assert sorted(r.data.params["sampling"] for r in confirm) == ["0", "0", "1", "1"]
    assert all("trained_accuracy" in r.data.metrics and "retained_accuracy" in r.data.metrics for r in runs)
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "FINISHED"

    again = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, timeout=600, capture_output=True, text=True)
    assert again.returncode == 0 and len(trial_runs(spec.tracking.uri, spec.experiment)[1]) == len(runs), "confirmation runs once"
    changed = subprocess.run(command + ["--resume", "--set", "search.num_samples=6"], cwd=tmp_path, env=env, timeout=600, capture_output=True, text=True)
    assert changed.returncode == 2 and "a search resumes only as it started" in changed.stderr, changed.stderr[-3000:]

    summary = build_report(spec.experiment, tracking_uri=spec.tracking.uri, out_dir=tmp_path / "report", log_to_mlflow=False)
    assert "sweep" in summary.sections and "sweep" in summary.figures
    text = summary.markdown.read_text()
    assert "Confirmation: trained_accuracy" in text and "Δ best − baseline" in text


def test_sigint_stops_the_running_tune_run_and_the_study():
    """The first SIGINT goes to the running Tune run's stop handler (SIGUSR1) and is remembered, so that no
    later phase starts; a second SIGINT interrupts at once."""
    from raysem.service.study import StopOnSigint, StudyInterrupted, _fit

    stopped = []
    outside = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup
    before = signal.signal(signal.SIGUSR1, lambda *_: stopped.append(True))
    try:
        with StopOnSigint() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert stop.received and stopped == [True]
            with pytest.raises(StudyInterrupted, match=r"0 of 3 Tune trials ended \(SIGINT\).*--resume"):
                _fit(None, 3, stop)  # a phase that has not started yet does not start
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert signal.getsignal(signal.SIGINT) is outside


def test_best_point_breaks_ties_the_same_way_in_any_trial_order(tmp_path, tiny_model_dir):
    """A resumed search restores its trials in another order; the confirmed point must not change."""
    from types import SimpleNamespace

    from raysem.service.study import best_point

    spec = load_spec(tiny_spec(tmp_path, tiny_model_dir, "ties", sweep={"gamma": {"uniform": [0.0, 2.0]}},
                               search={"algorithm": "optuna", "num_samples": 3}))  # fmt: skip
    results = [SimpleNamespace(metrics={"accuracy": a}, config={"unit": {"point": {"gamma": g}}}) for a, g in ((0.0, 1.5), (0.0, 0.5), (float("nan"), 0.1))]
    assert best_point(spec, results) == best_point(spec, results[::-1]) == {"gamma": 0.5}
    results[0].metrics["accuracy"] = 0.25
    assert best_point(spec, results[::-1]) == {"gamma": 1.5}
