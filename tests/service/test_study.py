"""Studies on a real local Ray and a real MLflow store: every trial logged once, resources checked first, resume."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest

from raysem.errors import SpecError
from raysem.service.interrupt import StudyInterrupted
from raysem.service.planning import count_trials
from raysem.service.spec import load_spec
from raysem.service.study import ResourceError, run_study

from conftest import tiny_spec, trial_runs

pytestmark = pytest.mark.slow


@pytest.fixture()
def local_ray(ray_runtime):
    """The shared local Ray (``conftest.ray_runtime``)."""


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
        assert (run.data.params["device"], run.data.params["precision"]) == ("cpu", "float32")
        records = pd.read_parquet(client.download_artifacts(run.info.run_id, "records/facts.parquet"))
        assert len(records) == int(run.data.params["k"])
        assert run.data.metrics["accuracy"] == pytest.approx(records["exact_match"].mean())
    assert by_k == {"1": 8, "3": 4}
    parent = client.get_run(outcome.parent_run_id).data
    assert (parent.params["trial.lr"], parent.params["trial.steps"], parent.params["sweep.gamma.grid"]) == (
        "0.001",
        "2",
        "[0.0, 1.0]",
    )
    assert (parent.params["trial.optimizer"], parent.params["prompt_style"], parent.params["sampling.k"]) == (
        "adamw",
        "fewshot",
        "1",
    )
    assert parent.tags["raysem.study_kind"] == "quick" and len(parent.tags["raysem.dataset_sha256"]) == 64
    gammas = {(r.data.params["k"], r.data.params["sampling"], r.data.params["seed"]): set() for r in runs}
    for run in runs:
        gammas[(run.data.params["k"], run.data.params["sampling"], run.data.params["seed"])].add(
            run.data.params["gamma"]
        )
    assert all(g == {"0.0", "1.0"} for g in gammas.values()), "every sampling is paired across γ with the same seed"

    again = run_study(spec)
    assert len(trial_runs(again.tracking_uri, spec.experiment)[1]) == outcome.trials, "finished trials are not redone"
    assert (again.trials, again.ran) == (outcome.trials, 0)

    # γ = 2 added to the grid, then --resume: a restored Tune run would hold only the old grid's trials
    grown = load_spec(
        tiny_spec(
            tmp_path, tiny_model_dir, "tiny-study", sweep={"k": {"grid": [1, 3]}, "gamma": {"grid": [0.0, 1.0, 2.0]}}
        )
    )
    assert run_study(grown, resume=True).ran == outcome.trials // 2
    keys = [r.data.tags["raysem.trial_key"] for r in trial_runs(again.tracking_uri, spec.experiment)[1]]
    assert len(keys) == len(set(keys)) == count_trials(grown) == outcome.trials * 3 // 2

    # the same name with another learning rate: refused before any trial, naming the field, or run apart
    # (fewer samplings, which are not part of the identity, keep the study run apart small)
    lr2 = {"trial": {"method": "lora", "steps": 2, "lr": 2e-3}, "sampling": {"k": 1, "n_samplings": 2, "per_k": {3: 1}}}
    changed = load_spec(tiny_spec(tmp_path, tiny_model_dir, "tiny-study", **lr2))
    with pytest.raises(
        SpecError,
        match=r"holds study run tiny-study .* changed: trial\.lr: 0\.001 -> 0\.002\. Its trials would be skipped",
    ):
        run_study(changed)
    apart = run_study(changed, new_experiment=True)
    assert apart.experiment.startswith("tiny-study-") and apart.ran == count_trials(changed) == 2 * 2 + 2 * 1
    assert len(trial_runs(again.tracking_uri, spec.experiment)[1]) == len(keys), (
        "nothing was added to the old experiment"
    )


def test_sigint_stops_the_running_tune_run_and_the_study():
    """The first SIGINT goes to the running Tune run's stop handler (SIGUSR1) and is remembered, so that no
    later phase starts; a second SIGINT interrupts at once."""
    from raysem.service.interrupt import StopOnSigint
    from raysem.service.tuning import fit

    stopped = []
    outside = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup
    before = signal.signal(signal.SIGUSR1, lambda *_: stopped.append(True))
    try:
        with StopOnSigint() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert stop.received and stopped == [True]
            with pytest.raises(StudyInterrupted, match=r"0 of 3 Tune trials finished \(SIGINT\).*--resume"):
                fit(None, 3, stop)  # a phase that has not started yet does not start
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert signal.getsignal(signal.SIGINT) is outside


def test_best_point_breaks_ties_the_same_way_in_any_trial_order(tmp_path, tiny_model_dir):
    """A resumed search restores its trials in another order; the confirmed point must not change."""
    from types import SimpleNamespace

    from raysem.service.planning import best_point

    spec = load_spec(
        tiny_spec(
            tmp_path,
            tiny_model_dir,
            "ties",
            sweep={"gamma": {"uniform": [0.0, 2.0]}},
            search={"algorithm": "optuna", "num_samples": 3},
        )
    )
    results = [
        SimpleNamespace(metrics={"accuracy": a}, config={"unit": {"point": {"gamma": g}}})
        for a, g in ((0.0, 1.5), (0.0, 0.5), (float("nan"), 0.1))
    ]
    assert best_point(spec, results) == best_point(spec, results[::-1]) == {"gamma": 0.5}
    results[0].metrics["accuracy"] = 0.25
    assert best_point(spec, results[::-1]) == {"gamma": 1.5}
