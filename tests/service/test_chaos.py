"""Exactly once under faults: a 500-trial study (480 packed, 20 unpacked) with a Tune worker killed, the mlflow server restarted,
the driver killed and resumed (``raysem bench chaos`` scaled down)."""

from __future__ import annotations

from raysem.service.chaos import run_chaos


def test_every_trial_logged_exactly_once_under_faults(tmp_path):
    summary = run_chaos(trials=500, kill_every=15.0, folder=tmp_path, timeout=900, unpacked_share=0.04, pack_size=120)
    assert summary["worker_kills"] >= 1 and summary["server_restarts"] == 1 and summary["driver_kills"] == 1, summary
    assert summary["finished_distinct"] == 500, summary
    assert (summary["duplicates"], summary["lost"], summary["unexpected"], summary["running"]) == (0, 0, 0, 0), summary
    assert summary["ok"]
