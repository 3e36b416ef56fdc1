"""MLflow tracking against real stores: a SQLite file and a real `mlflow server`; nothing lost when it is down."""

from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
from mlflow import MlflowClient

from raysem.ports import free_port
from raysem.service import tracking
from raysem.training.results import TrialResult, aggregate

from conftest import start_mlflow_server


def make_result(key: str) -> TrialResult:
    records = [
        {
            "fact_id": f"f{i}",
            "prompt": f"q{i}?",
            "target": f"t{i}",
            "y_old": "old",
            "y_old_raw": "old",
            "y_new": f"t{i}" if i == 0 else "no",
            "y_new_raw": "x",
            "exact_match": float(i == 0),
            "token_accuracy": 0.5,
            "generality": 0.0,
            "locality": 1.0,
            "locality_soft": 1.0,
            "portability": math.nan,
            "dist_old": 0.2 * (i + 1),
            "dist_new": 0.0 if i == 0 else 0.5,
            "deviation": i == 2,
            "rd": 1.0,
            "bad_case": i != 0,
            "y_new_empty": False,
        }
        for i in range(3)
    ]
    return TrialResult(
        key, {}, ["f0"], ["f0", "f1", "f2"], records, {**aggregate(records), "wall_s": 1.5}, [2.0, 1.0, 0.5]
    )


def read_back(uri: str, experiment: str, key: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`raysem.trial_key` = '{key}'")
    assert len(runs) == 1
    run = runs[0]
    local = client.download_artifacts(run.info.run_id, "records/facts.parquet")
    return client, run, pd.read_parquet(local)


def pend(
    tmp_path, key: str, experiment: str, parent: str | None = None, params: dict | None = None, error: str | None = None
):
    return tracking.PendingTrial(
        key, experiment, parent, params or {"gamma": 1.0, "k": 3}, {"raysem.model": "m"}, make_result(key), error
    ).write(tmp_path / "pending")


def assert_trial_run(uri: str, experiment: str, key: str, parent: str | None, status: str = "FINISHED"):
    client, run, facts = read_back(uri, experiment, key)
    assert run.info.status == status and run.info.end_time is not None
    assert run.data.tags.get("mlflow.parentRunId") == parent and run.data.tags["raysem.model"] == "m"
    assert run.data.params["gamma"] == "1.0" and run.data.params["k"] == "3"
    assert run.info.run_name == "k=3 γ=1 s0" == run.data.tags["mlflow.runName"]
    assert run.data.metrics["accuracy"] == pytest.approx(1 / 3)
    assert run.data.metrics["train_loss"] == 0.5, "the latest value of a series is its last step"
    assert [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    ] == [2.0, 1.0, 0.5]
    assert facts["fact_id"].tolist() == ["f0", "f1", "f2"] and facts["exact_match"].sum() == 1
    return run


def test_trials_logged_to_sqlite_in_one_batch_read_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_study(uri, "exp-a", "study", {"raysem.study_kind": "quick"}, {"spec": "{}"})
    folders = [pend(tmp_path, f"t-{i}", "exp-a", parent) for i in range(3)] + [
        pend(tmp_path, "t-bad", "exp-a", parent, error="ValueError: x")
    ]
    assert tracking.record_trials(uri, folders)
    assert not any(folder.exists() for folder in folders)
    for i in range(3):
        assert_trial_run(uri, "exp-a", f"t-{i}", parent)
    assert read_back(uri, "exp-a", "t-bad")[1].data.tags["raysem.error"] == "ValueError: x"
    assert tracking.finished_trial_keys(uri, "exp-a") == {"t-0", "t-1", "t-2", "t-bad"}
    # The store is one folder: the artifacts sit beside the database, not in ./mlruns of the working directory.
    stored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("facts.parquet"))
    assert len(stored) == 4 and all(p.startswith("mlflow-artifacts/exp-a/") for p in stored), stored


def test_a_batch_is_stored_whole_or_not_at_all(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = pend(tmp_path, "t-good", "exp-w")
    bad = pend(tmp_path, "t-bad", "exp-w", params={"gamma": 1.0, "k": 3, "bad key?": 1})
    with pytest.raises(Exception, match="bad key"):
        tracking.log_pending(uri, [good, bad])
    assert good.exists() and bad.exists()
    assert tracking.finished_trial_keys(uri, "exp-w") == set()


def test_sync_skips_trials_mlflow_already_has_and_orphans_are_closed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = pend(tmp_path, "t-1", "exp-y")
    copy = tmp_path / "copy"
    shutil.copytree(logged, copy)
    assert tracking.record_trials(uri, [logged])
    shutil.copytree(copy, logged)  # logged, then the process died before removing the folder
    pend(tmp_path, "t-2", "exp-y")
    assert tracking.sync_pending(uri, tmp_path / "pending") == (1, 1, [])
    assert sorted(
        r.data.tags["raysem.trial_key"]
        for r in tracking.search_trial_runs(uri, "exp-y", "attributes.status = 'FINISHED'")
    ) == ["t-1", "t-2"]

    client = MlflowClient(tracking_uri=uri)
    orphan = client.create_run(
        client.get_experiment_by_name("exp-y").experiment_id, tags={"raysem.role": "trial", "raysem.trial_key": "t-3"}
    )
    assert tracking.close_orphaned_runs(uri, "exp-y") == 1
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert "t-3" not in tracking.finished_trial_keys(uri, "exp-y"), "a killed run is not a finished trial"


def test_logger_reads_done_trials_once_then_keeps_them(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_study(uri, "exp-d", "study", {}, {})
    logger = tracking.TrialLogger(uri, "exp-d", parent, str(tmp_path / "pending"), {})
    assert logger.record([("t-1", {"gamma": 0.0}, make_result("t-1"), None)])
    reads = []
    real = tracking.finished_trial_keys
    monkeypatch.setattr(tracking, "finished_trial_keys", lambda *a: reads.append(a) or real(*a))
    fresh = tracking.TrialLogger(uri, "exp-d", parent, str(tmp_path / "pending"), {})
    assert fresh.done_among(["t-1", "t-2"]) == ["t-1"]
    fresh.record([("t-2", {"gamma": 1.0}, make_result("t-2"), None)])
    assert fresh.done_among(["t-2", "t-3", "t-1"]) == ["t-2", "t-1"]
    assert len(reads) == 1


def test_logger_fails_loudly_when_done_trials_cannot_be_read(tmp_path, monkeypatch):
    """A store error while resuming must not read as "nothing done" (that would re-run and duplicate every trial)."""
    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0.0, 0.0))
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    logger = tracking.TrialLogger(uri, "exp-e", None, str(tmp_path / "pending"), {})
    with pytest.raises(
        tracking.TrackingUnavailable, match="reading finished trials from sqlite:///.*a-file.*failed 3 times"
    ):
        logger.done_among(["t-1"])


@pytest.mark.slow
def test_unreachable_server_keeps_results_and_sync_logs_them_then_batches_go_through_it(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(tracking.TrackingUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        tracking.check_reachable(uri)
    pending = tmp_path / "pending"
    folder = tracking.PendingTrial("t-9", "exp-b", None, {"gamma": 0.0}, {}, make_result("t-9")).write(pending)
    assert not tracking.record_trials(uri, [folder])
    assert (pending / "t-9" / "meta.json").exists() and (pending / "t-9" / "facts.parquet").exists()

    server = start_mlflow_server(tmp_path / "server", port)
    try:
        assert tracking.sync_pending(uri, pending) == (1, 0, [])
        assert not (pending / "t-9").exists()
        _, run, facts = read_back(uri, "exp-b", "t-9")
        assert run.data.params["gamma"] == "0.0"
        assert run.data.metrics["wall_s"] == 1.5
        assert len(facts) == 3

        # a batch through the server (a pool of client threads) reads back like one through SQLite
        folders = [pend(tmp_path, f"t-{i}", "exp-s") for i in range(12)]
        assert tracking.record_trials(uri, folders)
        for i in range(12):
            assert_trial_run(uri, "exp-s", f"t-{i}", None)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_run_names_are_readable_and_rounded():
    params = {
        "k": 100,
        "gamma": 0.2153133598719359,
        "filter_mode": "filter",
        "replace": 0.6,
        "filter_lambda": 2.380208256824961,
        "method": "lora",
        "sampling": 3,
    }
    pending = tracking.PendingTrial("t-1", "e", None, params, {}, make_result("t-1"))
    assert pending.run_name == "k=100 γ=0.215 filter ρ=0.6 λ=2.38 lora s3"
    assert tracking.PendingTrial("t-2", "e", None, {"gamma": 1.0}, {}, make_result("t-2")).run_name == "t-2"


def test_tracking_bench_reads_every_run_back_and_gives_the_server_ceiling():
    from raysem.bench.tracking import run_tracking_bench

    out = run_tracking_bench(trials=24, batch=8, per_trial=4)
    for name in ("sqlite", "server"):
        assert (
            out[name]["runs_per_s"] > 0
            and out[name]["speedup"] == out[name]["runs_per_s"] / out[name]["per_trial_runs_per_s"]
        )
    assert out["server_store"]["runs_per_s"] > 0 and out["runs_per_s"] == out["sqlite"]["runs_per_s"]
    ceiling = out["server_ceiling"]
    assert ceiling["runs_per_s_bound"] == ceiling["write_requests_per_s"] / 3 > 0


def test_a_moved_sqlite_store_is_relocated_and_reads_back(tmp_path):
    from typer.testing import CliRunner

    from raysem.cli.main import app

    uri = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    (tmp_path / "a").mkdir()
    parent = tracking.start_study(uri, "exp-a", "study", {}, {"spec": "{}"})
    assert tracking.record_trials(uri, [pend(tmp_path, f"t-{i}", "exp-a", parent) for i in range(2)])
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["relocate", moved])
    assert result.exit_code == 0 and result.output.strip() == "4 artifact locations rewritten", (
        result.output
    )  # experiment, parent, 2 trials
    for i in range(2):
        assert_trial_run(moved, "exp-a", f"t-{i}", parent)
    assert CliRunner().invoke(app, ["relocate", moved]).output.strip() == "0 artifact locations rewritten"
    refused = CliRunner().invoke(app, ["relocate", "http://127.0.0.1:5000"])
    assert refused.exit_code == 2 and "not a sqlite:/// store" in refused.output
