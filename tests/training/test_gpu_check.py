"""The GPU check's dry run: every step on CPU with tiny shapes, where the GPU machine's packages are missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from raysem.bench.gpu_check import CheckSettings, deepspeed_step
from raysem.data.facts import Fact

from conftest import REPO_ROOT, shared_file

ABSENT = ("ray", "mlflow", "deepspeed", "sklearn", "scipy")
"""What the GPU machine lacks (pydantic too, which the check brings as wheels; it is present here)."""


def test_dry_run_without_the_missing_packages(tmp_path):
    from raysem.models.loader import resolve_model_path

    resolve_model_path("smollm2-135m-instruct")  # config and tokenizer come from the embedded model's folder
    shared_file("zsre/zsre_mend_eval_1037.json")
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocker)}
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--folder", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] and summary["matmul_tflops"] > 0
    assert summary["embedded"]["same_y_new_as_unpacked"] == 1.0 and set(summary["embedded"]["packed"]) == {"2"}
    assert [row["k"] for row in summary["llama7b"]] == [2] and summary["llama7b"][0]["mfu"] > 0
    assert summary["deepspeed"]["skipped"].startswith("deepspeed is not importable")
    assert set(summary["goals"]) == {"packed_speedup", "packed_mfu", "llama7b_mfu"}
    # the study's own functions, as a unit calls them, with the plan's estimate beside the trials
    steps = [row["step"] for row in summary["study"]]
    assert steps == ["ResidentModel", "base records, 4 facts", "run_trial, 4 facts", "run_packed_trials, 2 trials"]
    assert all(row["s"] > 0 for row in summary["study"])
    assert [row["planned_gib"] is not None for row in summary["study"]] == [False, False, True, True]
    agreement = summary["agreement"]  # cpu against cpu in a dry run: identical
    assert agreement["same_answers"] == 1.0 and agreement["max_loss_relative_diff"] == 0.0 and agreement["within"]
    for text in (
        "naive, 1 trials",
        "packed K=2",
        "7B-shaped packed step K=2",
        "≥ 50% MFU",
        "skipped: deepspeed",
        "whole check",
        "study code: run_packed_trials, 2 trials",
        "cpu against cpu, 16 facts",
    ):
        assert text in proc.stdout
    assert wall < 180, f"the dry run took {wall:.0f} s"  # 42–88 s measured on 2 cores shared with a running study


@pytest.mark.slow
def test_deepspeed_step_on_cpu(tiny_model_dir):
    facts = [
        Fact(id="a", prompt="Who wrote Hamlet?", target="Charles Dickens"),
        Fact(id="b", prompt="What is 2 + 2?", target="5"),
    ]
    result = deepspeed_step(CheckSettings.dry(), str(tiny_model_dir), facts, peak_gflops=1.0, say=lambda message: None)
    assert result["facts"] == 2 and result["step_s"] > 0 and result["mfu"] > 0
