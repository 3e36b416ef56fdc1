"""Distance tables: equal to base_records, cached by key, the Ray Data job, the spec, and `raysem distances`."""

from __future__ import annotations

import json
import math
import runpy
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from raysem.cli.semantic import semantic_app
from raysem.paths import raysem_home
from raysem.semantics.evaluate import base_records
from raysem.semantics.tables import (
    COLUMNS,
    base_lookup,
    distance_table,
    load_distance_table,
    summary,
    write_table,
)
from raysem.service.spec import DistanceTableSpec, SpecError, load_spec

from conftest import REPO_ROOT, shared_file

ZSRE = "zsre/zsre_mend_eval_1037.json"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A fresh raysem cache that still sees the pulled models of the real one."""
    models = raysem_home() / "models"
    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").symlink_to(models, target_is_directory=True)
    return tmp_path / "home"


@pytest.fixture()
def zsre6():
    from raysem.data.datasets import load_facts

    return load_facts(shared_file(ZSRE), limit=6)


def _assert_same_records(table: dict, direct: list[dict]) -> None:
    assert list(table) == [r["fact_id"] for r in direct]
    for record in direct:
        row = table[record["fact_id"]]
        assert row.keys() == record.keys()
        for key, value in record.items():
            if key == "dist_old":
                assert (math.isnan(row[key]) and math.isnan(value)) or row[key] == pytest.approx(value, abs=1e-9)
            else:
                assert row[key] == value, key


@pytest.mark.slow
def test_table_equals_base_records(smol, zsre6, home):
    facts = zsre6.facts[:3]
    frame, path = distance_table(smol, facts, batch_size=2, progress=False)
    assert path.parent == home / "distances" and path.suffix == ".parquet"
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 3
    assert list(frame["target"]) == [f.target for f in facts]
    assert list(frame["prompt"]) == [f.prompt for f in facts]
    direct = base_records(smol, facts)
    assert sum(not math.isnan(r["dist_old"]) for r in direct) >= 2
    _assert_same_records(base_lookup(frame), direct)
    assert frame.attrs["raysem"]["model"] == "smollm2-135m-instruct"


def test_second_call_reads_the_cache(tiny, tiny_model_dir, zsre6, home):
    frame, path = distance_table(str(tiny_model_dir), zsre6, batch_size=4, progress=False)
    assert path.parent == home / "distances" and len(frame) == 6
    assert frame.attrs["raysem"]["facts"] == 6 and frame.attrs["raysem"]["dataset_sha256"] == zsre6.sha256
    direct = base_records(tiny, zsre6.facts)
    assert sum(bool(r["y_old"]) for r in direct) >= 3, "compare tables of real (non-empty) answers"
    _assert_same_records(base_lookup(frame), direct)

    start = time.perf_counter()
    again, again_path = distance_table(str(tiny_model_dir), zsre6, batch_size=4, progress=False)
    assert time.perf_counter() - start < 1.0
    assert again_path == path
    pd.testing.assert_frame_equal(again, frame)

    # The same facts named differently (a path with a limit, the loaded model) share the entry.
    assert distance_table(tiny, str(shared_file(ZSRE)), limit=6, progress=False)[1] == path
    other = distance_table(str(tiny_model_dir), zsre6.facts[:5], progress=False)[1]
    assert other != path and other.is_file()


def test_prompting_is_part_of_the_key_and_the_metadata(tiny, tiny_model_dir, zsre6, home):
    import dataclasses

    from raysem.models.prompts import Prompting

    facts = zsre6.facts[:3]
    few, few_path = distance_table(str(tiny_model_dir), facts, progress=False)
    chat, chat_path = distance_table(str(tiny_model_dir), facts, progress=False, prompting=Prompting("chat"))
    assert few_path != chat_path
    assert (few.attrs["raysem"]["prompt_style"], chat.attrs["raysem"]["prompt_style"]) == ("fewshot", "chat")
    assert chat.attrs["raysem"]["answer_budget"] == "target"
    assert list(chat["y_old"]) != list(few["y_old"])
    chat_lm = dataclasses.replace(tiny, prompting=Prompting("chat"))
    assert distance_table(chat_lm, facts, progress=False)[1] == chat_path, "a loaded model brings its own prompting"
    with pytest.raises(ValueError, match="differs from the loaded model"):
        distance_table(chat_lm, facts, progress=False, prompting=Prompting("fewshot"))


def test_refresh_recomputes(tiny_model_dir, zsre6, home):
    _, path = distance_table(str(tiny_model_dir), zsre6.facts[:2], progress=False)
    first = load_distance_table(path).attrs["raysem"]
    time.sleep(1.1)
    frame, again = distance_table(str(tiny_model_dir), zsre6.facts[:2], refresh=True, progress=False)
    assert again == path
    assert frame.attrs["raysem"]["created"] != first["created"]


def _frame(dist: list[float]) -> pd.DataFrame:
    n = len(dist)
    return pd.DataFrame(
        {
            "fact_id": [f"f{i}" for i in range(n)],
            "prompt": [f"q{i}?" for i in range(n)],
            "target": [f"t{i}" for i in range(n)],
            "y_old": ["" if math.isnan(d) else f"a{i}" for i, d in enumerate(dist)],
            "y_old_raw": [f"a{i}" for i in range(n)],
            "dist_old": dist,
            "target_tokens": [2] * n,
            "prompt_tokens": [9] * n,
            "y_old_empty": [math.isnan(d) for d in dist],
            "locality_base": [[f"l{i}", "x"] for i in range(n)],
        }
    )


def test_summary_counts_empty_answers():
    stats = summary(_frame([0.2, math.nan, 0.4, 0.9]))
    assert stats["count"] == 4 and stats["empty"] == 1
    assert stats["mean"] == pytest.approx(0.5)
    assert stats["std"] == pytest.approx(math.sqrt((0.09 + 0.01 + 0.16) / 3))
    assert (stats["min"], stats["max"]) == (0.2, 0.9)
    assert stats["preface"] == 0 and stats["train_tokens"] == 11.0
    frame = _frame([0.2, 0.3, 0.4]).assign(
        y_old=["The artist who", "The Hague", "John Williams"], target=["2006", "The Hague", "Tolkien"]
    )
    assert summary(frame)["preface"] == 1


def test_write_load_and_lookup_round_trip(tmp_path):
    path = write_table(_frame([0.2, math.nan]), tmp_path / "t.parquet", {"model": "m"})
    frame = load_distance_table(path)
    assert frame.attrs["raysem"] == {"model": "m"}
    lookup = base_lookup(frame)
    assert lookup["f0"] == {
        "fact_id": "f0",
        "y_old": "a0",
        "y_old_raw": "a0",
        "dist_old": 0.2,
        "target_tokens": 2,
        "prompt_tokens": 9,
        "y_old_empty": False,
        "locality_base": ["l0", "x"],
    }
    assert math.isnan(lookup["f1"]["dist_old"]) and lookup["f1"]["y_old_empty"] is True


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_distance_table(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="is not a Parquet distance table"):
        load_distance_table(tmp_path / "bad.parquet")
    pd.DataFrame({"fact_id": ["a"]}).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"missing columns \['prompt', 'target'"):
        load_distance_table(tmp_path / "cols.parquet")


def test_job_spec_validation(tmp_path):
    spec = load_spec(REPO_ROOT / "jobs" / "distance_table.yaml", kind=DistanceTableSpec)
    assert spec.dataset == "zsre" and spec.actors >= 1 and spec.limit is None
    cases = {
        "dataset: zsre\nactors: 0\n": "actors: Input should be greater than or equal to 1",
        "dataset: zsre\nbatchsize: 8\n": "batchsize: Extra inputs are not permitted",
        "model: m\n": "dataset: Field required",
        "dataset: zsre\nlimit: many\n": "limit: Input should be a valid integer",
        "- a\n- b\n": "a spec is a mapping of fields, got list",
        "dataset: [zsre\n": "not valid YAML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(bad, kind=DistanceTableSpec)
        assert str(bad) in str(info.value) and message in str(info.value), text
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "none.yaml", kind=DistanceTableSpec)


@pytest.mark.slow
def test_cli_distances_json_and_out(home, tmp_path):
    runner = CliRunner()
    out = tmp_path / "copy.csv"
    args = ["distances", str(shared_file(ZSRE)), "--model", "smollm2-135m-instruct", "--limit", "3", "--json"]
    result = runner.invoke(semantic_app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    dist = load_distance_table(payload["cache"])["dist_old"].to_numpy()
    defined = dist[~np.isnan(dist)]
    assert payload["count"] == 3 and payload["empty"] == 3 - len(defined) and len(defined) > 0
    assert payload["mean"] == pytest.approx(defined.mean()) and payload["std"] == pytest.approx(defined.std())
    assert (payload["min"], payload["max"]) == (defined.min(), defined.max())
    assert payload["path"] == str(out) and len(pd.read_csv(out)) == 3


def test_cli_distances_without_defined_distances(tiny_model_dir, home):
    # Under the chat template the tiny random model answers with blank lines only: every distance is undefined.
    runner = CliRunner()
    args = [
        "distances",
        str(shared_file(ZSRE)),
        "--model",
        str(tiny_model_dir),
        "--limit",
        "3",
        "--prompt-style",
        "chat",
    ]
    result = runner.invoke(semantic_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (
        payload["count"] == 3
        and payload["empty"] == 3
        and payload["mean"] is None
        and payload["prompt_style"] == "chat"
    )
    text = runner.invoke(semantic_app, args)
    assert text.exit_code == 0 and payload["cache"] in text.stdout.replace("\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["distances", "nosuchset", "--model", "smollm2-135m-instruct"], "is neither a dataset name"),
        (["distances", ZSRE, "--model", "/no/such/model", "--limit", "2"], "is not a model folder"),
        (["distances", ZSRE, "--out", "x.txt"], "--out must end in .parquet or .csv"),
    ],
)
def test_cli_distances_errors(args, message, home):
    args = [str(shared_file(a)) if a == ZSRE else a for a in args]  # resolved here, so a missing copy skips the test
    result = CliRunner().invoke(semantic_app, args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_ray_data_job_writes_the_same_table(without_ray, tiny_model_dir, zsre6, home, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model: {tiny_model_dir}\ndataset: {shared_file(ZSRE)}\nlimit: 6\nbatch_size: 4\nactors: 1\n")
    job = runpy.run_path(str(REPO_ROOT / "jobs" / "distance_table.py"))
    assert job["main"](["--spec", str(spec), "--quick", "--address", "local"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ray_frame = load_distance_table(report["path"])
    assert report["count"] == 6 and ray_frame.attrs["raysem"]["computed_by"].startswith("ray-data")

    local, local_path = distance_table(str(tiny_model_dir), zsre6, refresh=True, progress=False)
    assert str(local_path) == report["path"]
    for column in COLUMNS:
        if column == "dist_old":
            np.testing.assert_allclose(ray_frame[column], local[column], atol=1e-6)
        else:
            assert list(ray_frame[column]) == list(local[column]), column
