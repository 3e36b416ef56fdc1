"""``raysem report`` on a real MLflow SQLite store holding a synthetic study that follows the run contract."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image
from typer.testing import CliRunner

from raysem.cli.report import report_app
from raysem.report.analysis import target_kind
from raysem.report.build import ReportError, build_report
from raysem.training.results import trial_aggregates

from conftest import new_store

EXPERIMENT, OTHER, EMPTY, FAILED = "synthetic-study", "synthetic-rerun", "empty-study", "failed-study"
W_FRO = 88.4206
CI = r"-?\d+\.\d{2} \[-?\d+\.\d{2}, -?\d+\.\d{2}\]"


def _records(rng: np.random.Generator, sampling: int, k: int, p_learn: float) -> pd.DataFrame:
    """Plausible per-fact records: learned facts reach distance 0; others drift from dist_old."""
    dist_old = rng.uniform(0.05, 0.95, size=k)
    learned = rng.random(k) < p_learn
    drift = np.abs(1 + rng.normal(0.15, 0.4, size=k))
    dist_new = np.where(learned, 0.0, dist_old * drift)
    rows = []
    for i in range(k):
        target = f"Target {sampling}-{i}"
        y_new = target if learned[i] else f"Other {sampling}-{i}"
        rows.append(
            {
                "fact_id": f"f{sampling:02d}-{i:03d}",
                "prompt": f"What is fact {sampling}-{i}? | piped",
                "target": target,
                "y_old": f"Old {i}",
                "y_old_raw": f"Old {i}.",
                "y_new": y_new,
                "y_new_raw": y_new,
                "exact_match": float(learned[i]),
                "token_accuracy": float(learned[i]) * 0.5 + 0.4,
                "generality": float(rng.random() < p_learn),
                "locality": float(rng.uniform(0.3, 0.9)),
                "locality_soft": 0.9,
                "portability": float("nan"),
                "dist_old": float(dist_old[i]),
                "dist_new": float(dist_new[i]),
                "deviation": bool(dist_new[i] > dist_old[i]),
                "rd": float((dist_new[i] - dist_old[i]) / dist_old[i]),
                "bad_case": bool(not learned[i]),
                "y_new_empty": False,
            }
        )
    return pd.DataFrame(rows)


class _Store:
    def __init__(self, root: Path):
        self.root = root
        self.uri = new_store(root)
        self.client = MlflowClient(self.uri)
        self.clock = int(time.time() * 1000) - 10_000_000
        self.trials: dict[str, dict[str, dict]] = {}
        """experiment id -> trial key -> params, records and metrics of the run that must win."""

    def experiment(self, name: str) -> str:
        return self.client.create_experiment(name, artifact_location=(self.root / "artifacts" / name).as_uri())

    def _run(self, exp_id: str, tags: dict, status: str = "FINISHED") -> str:
        self.clock += 1000
        run = self.client.create_run(exp_id, start_time=self.clock, tags=tags)
        return run.info.run_id

    def parent(self, exp_id: str) -> str:
        run_id = self._run(exp_id, {"raysem.role": "study", "raysem.study_kind": "synthetic"})
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def trial(self, exp_id, parent, key, params, records=None, status="FINISHED", extra=None, analysis=None):
        tags = {"raysem.role": "trial", "raysem.trial_key": key, "mlflow.parentRunId": parent}
        run_id = self._run(exp_id, tags)
        full = {
            "method": "lora",
            "rank": 4,
            "lr": 1e-3,
            "steps": 10,
            "seed": 0,
            "dataset": "worldfacts",
            "model": "smol",
            "filter_mode": "none",
            "filter_lambda": 0.0,
            "replace": None,
            "mean_min": 0.0,
            "mean_max": 1.0,
            "study_kind": "synthetic",
            "gamma": 0.0,
            **params,
        }
        # Like the study service, the group label names the swept point (so it varies with γ).
        full["group"] = ",".join(f"{n}={params[n]}" for n in sorted(params) if n not in ("k", "sampling")) or "base"
        rows = [] if records is None else records.to_dict("records")
        ids, dist = [r["fact_id"] for r in rows], [r["dist_old"] for r in rows]
        metrics = {
            k: v
            for k, v in trial_aggregates(rows, ids, dist, n_test=len(rows), failed=records is None).items()
            if v == v
        }
        metrics.update(extra or {})
        ts = self.clock
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()]
            + [Metric("train_loss", 2.0 / (s + 1), ts, s) for s in range(3)],
            params=[Param(k, str(v)) for k, v in full.items()],
        )
        if records is not None:
            folder = self.root / "staging" / run_id
            (folder / "records").mkdir(parents=True)
            records.to_parquet(folder / "records" / "facts.parquet")
            for name, write in (analysis or {}).items():
                (folder / "analysis").mkdir(exist_ok=True)
                write(folder / "analysis" / name)
            self.client.log_artifacts(run_id, str(folder))
            self.trials.setdefault(exp_id, {})[key] = {"params": full, "records": records, "metrics": metrics}
        self.client.set_terminated(run_id, status)
        return run_id


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    store = _Store(root)
    rng = np.random.default_rng(7)
    exp = store.experiment(EXPERIMENT)
    first = store.parent(exp)
    # γ sweep, 10 facts per trial, paired samplings 0..3.
    for sampling in range(4):
        for gamma, p in ((0.0, 0.3), (1.0, 0.5)):
            recs = _records(rng, sampling, 10, p)
            analysis = {}
            if gamma == 0:
                frob = {
                    "layer": 29,
                    "rank": 4,
                    "dW_fro": 0.1 + 0.01 * sampling,
                    "W_fro": W_FRO,
                    "proj_dW_fro": 0.2,
                    "proj_W_fro": 1.39,
                    "proj_random_fro": 0.08,
                }
                frob["amplification"] = frob["dW_fro"] / frob["proj_dW_fro"]
                analysis["frobenius.json"] = lambda p, f=frob: p.write_text(json.dumps(f))
            if gamma == 0 and sampling < 2:
                feats = rng.normal(size=(10, 8)).astype(np.float32)
                analysis["features.npz"] = lambda p, f=feats, r=recs: np.savez(
                    p, features=f, dist_old=r["dist_old"].to_numpy(), fact_ids=r["fact_id"].to_numpy().astype(str)
                )
            store.trial(
                exp,
                first,
                f"gamma{gamma:g}-s{sampling}",
                {"gamma": gamma, "k": 10, "sampling": sampling},
                recs,
                analysis=analysis,
            )
    # A resumed study: a second parent re-runs one key (the newer FINISHED run wins) and
    # holds single-fact trials, a failed trial and a filter/random pair.
    second = store.parent(exp)
    stale = _records(rng, 0, 10, 0.0)
    store.trial(exp, first, "gamma1-s9", {"gamma": 1.0, "k": 10, "sampling": 9}, stale)
    store.trials[exp].pop("gamma1-s9")
    store.trial(exp, second, "gamma1-s9", {"gamma": 1.0, "k": 10, "sampling": 9}, _records(rng, 9, 10, 0.9))
    store.trial(exp, second, "gamma0-s9", {"gamma": 0.0, "k": 10, "sampling": 9}, _records(rng, 9, 10, 0.2))
    for sampling in range(6):
        store.trial(
            exp, second, f"single-s{sampling}", {"k": 1, "sampling": sampling}, _records(rng, 20 + sampling, 1, 0.3)
        )
    store.trial(exp, second, "single-s99", {"k": 1, "sampling": 99}, None, status="FAILED")
    for sampling in range(2):
        for mode, p in (("filter", 0.5), ("random", 0.2)):
            split = {
                "retained_accuracy": p + 0.1 * sampling,
                "replaced_accuracy": 0.05 * sampling,
                "n_retained": 4.0 + sampling,
                "n_replaced": 6.0 - sampling,
            }
            store.trial(
                exp,
                second,
                f"{mode}-s{sampling}",
                {"k": 10, "sampling": sampling, "filter_mode": mode, "replace": 0.6, "filter_lambda": 0.5},
                _records(rng, 40 + sampling, 10, p),
                extra=split,
            )
    # A second experiment with the same γ = 0, k = 10 configuration, for --compare.
    other = store.experiment(OTHER)
    parent_b = store.parent(other)
    for sampling in range(4):
        store.trial(
            other,
            parent_b,
            f"gamma0-s{sampling}",
            {"gamma": 0.0, "k": 10, "sampling": sampling},
            _records(rng, sampling, 10, 0.6),
        )
    store.experiment(EMPTY)
    failed = store.experiment(FAILED)
    store.trial(failed, store.parent(failed), "only", {"k": 1, "sampling": 0}, None, status="FAILED")

    out = root / "report"
    started = time.perf_counter()
    summary = build_report(EXPERIMENT, tracking_uri=store.uri, out_dir=out, compare=OTHER)
    elapsed = time.perf_counter() - started
    return store, summary, out.joinpath("report.md").read_text(), first, second, elapsed, store.trials[exp]


def _table(md: str, caption_start: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose bold caption starts with the given text."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{caption_start}"))
    header = [h.strip() for h in lines[start + 2].strip("|").split("|")]
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        rows.append(dict(zip(header, cells)))
    return rows


def test_sections_figures_and_timing(study):
    store, summary, md, *_, elapsed, _ = study
    assert summary.sections == [
        "headline",
        "fig3",
        "fig4_table1",
        "fig6",
        "table2",
        "fig5",
        "fig7",
        "tables3_4",
        "fig8",
        "table5",
        "compare",
    ]
    assert summary.skipped == {}
    assert set(summary.figures) == {"fig3", "fig4", "fig5", "fig6", "fig7", "fig8"}
    for path in summary.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.size[0] >= 400 and img.size[1] >= 300
        assert f"]({path.relative_to(summary.out_dir).as_posix()})" in md
    assert elapsed < 30


def test_trials_deduplicated_and_failures_counted(study):
    store, summary, md, *_ = study
    # 8 γ-sweep + 2 re-run keys + 6 single + 1 failed + 4 filter/random; one stale duplicate dropped.
    assert summary.n_trials == 21
    assert summary.n_failed == 1
    assert summary.n_duplicates == 1
    assert "single-s99" in md
    first, *rows = summary.describe().splitlines()[: 1 + len(summary.headline)]
    assert first == "headline: mean [95% bootstrap CI]"
    for (label, head), row in zip(summary.headline.items(), rows):
        acc = head["accuracy"]
        assert row.startswith(
            f"  {label}: {head['n_trials']} trials, accuracy {acc.estimate:.2f} [{acc.low:.2f}, {acc.high:.2f}]"
        )


def test_table1_matches_the_records(study):
    store, summary, md, *_, trials = study
    singles = pd.concat([t["records"] for k, t in trials.items() if k.startswith("single-")])
    bad = singles[singles["bad_case"]]
    expected = 100 * bad["deviation"].sum() / len(bad)
    (row,) = _table(md, "Table 1.")
    assert row["Bad cases"] == str(len(bad))
    assert re.fullmatch(CI, row["Deviation among bad cases (%)"])
    assert row["Deviation among bad cases (%)"].startswith(f"{expected:.2f} [")


def test_tables_3_4_paired_delta_and_levels(study):
    store, summary, md, *_, trials = study
    acc = {k: t["metrics"]["accuracy"] for k, t in trials.items() if k.startswith("gamma")}
    pairs = [s for s in (0, 1, 2, 3, 9) if f"gamma0-s{s}" in acc and f"gamma1-s{s}" in acc]
    delta = 100 * np.mean([acc[f"gamma1-s{s}"] - acc[f"gamma0-s{s}"] for s in pairs])
    (row,) = _table(md, "Table 3 (paired deltas).")
    assert row["Pairs"] == str(len(pairs)) == "5"
    assert row["γ"] == "1"
    assert row["Δ Accuracy (pp)"].startswith(f"{delta:+.2f} [")
    levels = {r["γ"]: r for r in _table(md, "Tables 3–4.") if r["k"] == "10"}
    for gamma in ("0", "1"):
        mean = 100 * np.mean([v for k, v in acc.items() if k.startswith(f"gamma{gamma}-")])
        assert re.fullmatch(CI, levels[gamma]["Accuracy (%)"])
        assert levels[gamma]["Accuracy (%)"].startswith(f"{mean:.2f} [")
        gen = 100 * np.mean([t["metrics"]["generality"] for k, t in trials.items() if k.startswith(f"gamma{gamma}-")])
        assert levels[gamma]["Generality (%)"].startswith(f"{gen:.2f} [")
    assert summary.headline  # fractions, keyed by configuration
    key = next(k for k in summary.headline if "γ=1" in k and "k=10" in k)
    assert summary.headline[key]["accuracy"].estimate == pytest.approx(
        np.mean([v for k, v in acc.items() if k.startswith("gamma1-")])
    )


def test_table3_split_by_lambda_from_the_records(study):
    """Each trial's exact match within its extreme-λ facts and within the rest, paired γ = 1 against γ = 0."""
    from raysem.semantics.embedding import reweight_coefficient

    store, summary, md, *_, trials = study

    def split(key: str) -> tuple[float, float]:
        records = trials[key]["records"]
        extreme = records["dist_old"].map(reweight_coefficient) > 0.25
        return records["exact_match"][extreme].mean(), records["exact_match"][~extreme].mean()

    pairs = [s for s in (0, 1, 2, 3, 9) if f"gamma0-s{s}" in trials and f"gamma1-s{s}" in trials]
    by_side = [[split(f"gamma{g}-s{s}") for s in pairs] for g in (0, 1)]
    (row,) = _table(md, "Table 3 by λ.")
    assert row["Pairs"] == str(len(pairs)) and row["γ"] == "1"
    for side, column in ((0, "Δ extreme (pp)"), (1, "Δ medium (pp)")):
        delta = 100 * np.nanmean([b[side] - a[side] for a, b in zip(*by_side)])
        assert row[column].startswith(f"{delta:+.2f} ["), (column, row[column], delta)


def test_figure_data_and_other_tables(study):
    store, summary, md, *_, trials = study
    # Figure 3 pools the facts of plain multi-fact trials per distance bin.
    plain = pd.concat([t["records"] for k, t in trials.items() if k.startswith("gamma0-")])
    in_bin = plain[(plain["dist_old"] >= 0.3) & (plain["dist_old"] < 0.4)]
    row = next(r for r in _table(md, "Figure 3 data") if r["Distance bin"] == "[0.3, 0.4)")
    assert row["Facts"] == str(len(in_bin))
    assert row["Accuracy (%)"].startswith(f"{100 * in_bin['exact_match'].mean():.2f}")
    # ... and in the paper's bands, with the differences from medium.
    bands_rows = _table(md, "Figure 3 in the paper's bands")
    kinds = ["all", *sorted(set(plain["target"].map(target_kind)))]
    assert sorted((r["Targets"], r["Metric"]) for r in bands_rows) == sorted(
        (kind, metric) for kind in kinds for metric in ("exact match", "token accuracy")
    )
    bands = next(r for r in bands_rows if (r["Targets"], r["Metric"]) == ("all", "exact match"))
    dist = plain["dist_old"].clip(0, 1)
    medium, long = plain[(dist >= 0.3) & (dist < 0.6)], plain[dist >= 0.6]
    assert bands["medium"].startswith(f"{100 * medium['exact_match'].mean():.2f} [") and bands["medium"].endswith(
        f"({len(medium)})"
    )
    diff = 100 * (long["exact_match"].mean() - medium["exact_match"].mean())
    assert bands["long − medium"].startswith(f"{diff:+.2f}")
    tokens = next(r for r in bands_rows if (r["Targets"], r["Metric"]) == ("all", "token accuracy"))
    assert tokens["medium"].startswith(f"{100 * medium['token_accuracy'].mean():.2f} [")
    # ... and in deciles of the model's own distances over the distinct facts: the ends against the middle 40%.
    edges = np.quantile(plain.drop_duplicates("fact_id")["dist_old"], np.arange(1, 10) / 10)
    decile = np.searchsorted(edges, plain["dist_old"], side="right")
    bottom, middle, top = plain[decile == 0], plain[(decile >= 3) & (decile <= 6)], plain[decile == 9]
    deciles = next(r for r in _table(md, "Figure 3 in model-relative bins") if r["Targets"] == "all")
    assert deciles["Cut points"].startswith(f"< {edges[0]:.3f} / {edges[2]:.3f}–{edges[6]:.3f}")
    assert deciles["middle 40%"].endswith(f"({len(middle)})") and deciles["top 10%"].endswith(f"({len(top)})")
    diff = 100 * (bottom["exact_match"].mean() - middle["exact_match"].mean())
    assert deciles["bottom − middle"].startswith(f"{diff:+.2f}")
    (clipped,) = _table(md, "Distances above 1")
    assert clipped["dist_new > 1"].startswith(f"{int((plain['dist_new'] > 1).sum())} (")
    # Table 2: the four γ = 0 trials with a Frobenius analysis, split into distance thirds;
    # the constant ‖W_q‖_F appears in every third that holds trials.
    w_row = next(r for r in _table(md, "Table 2") if r["Norm"] == "‖W_q‖_F")
    thirds = {h: int(h.rsplit("n=", 1)[1]) for h in w_row if "n=" in h}
    assert sum(thirds.values()) == 4
    assert all((f"{W_FRO:.4f} [" in w_row[h]) == (n > 0) for h, n in thirds.items())
    # Figure 7: filter vs random paired at ρ = 0.6 over samplings 0 and 1.
    accs = {k: t["metrics"]["accuracy"] for k, t in trials.items() if k.startswith(("filter", "random"))}
    delta = 100 * np.mean([accs[f"filter-s{s}"] - accs[f"random-s{s}"] for s in range(2)])
    (row,) = _table(md, "Figure 7 data")
    assert row["ρ"] == "0.6" and row["Pairs"] == "2"
    assert row["Δ filter − random (pp)"].startswith(f"{delta:+.2f}")
    # ... and split by what was trained: retained / replaced accuracy and counts, paired on retained accuracy.
    split = {r["Selection"]: r for r in _table(md, "Figure 7, split by what was trained")}
    assert set(split) == {"filter", "random"} and split["filter"]["Trials"] == "2"
    assert (split["filter"]["Retained facts"], split["filter"]["Replaced facts"]) == ("4.5", "5.5")
    assert split["filter"]["Retained (%)"].startswith("55.00 [") and split["random"]["Retained (%)"].startswith(
        "25.00 ["
    )
    assert split["random"]["Replaced (%)"].startswith("2.50 [")
    assert split["filter"]["Δ retained (pp)"].startswith("+30.00") and "2 pairs" in split["filter"]["Δ retained (pp)"]
    assert split["random"]["Δ retained (pp)"] == "—"
    # Table 5 escapes the pipe in the prompt and keeps examples per band.
    examples = _table(md, "Table 5.")
    assert examples and {r["Band"] for r in examples} <= {"short", "medium", "long"}
    assert any("\\| piped" in line for line in md.splitlines() if line.startswith("| short"))
    # Comparison: B's γ = 0, k = 10 configuration beside A's.
    cmp_rows = [r for r in _table(md, "Headline metrics of") if r["Metric"] == "Accuracy"]
    assert len(cmp_rows) == 1 and "γ=0" in cmp_rows[0]["Configuration"]
    assert cmp_rows[0]["Difference"].startswith("paired, 4 pairs")


def test_html_is_self_contained(study):
    store, summary, md, *_ = study
    page = summary.html.read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == len(summary.figures)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"\b(href|src)=\"(?!data:)", page)
    assert "<caption>Table 1." in page and "Tables 3–4." in page


def test_report_logged_to_the_latest_parent_run(study):
    store, summary, md, first, second, *_ = study
    assert summary.parent_run_ids == [first, second]
    assert summary.logged_run_id == second
    logged = {f.path for f in store.client.list_artifacts(second, "report")}
    assert {"report/report.md", "report/report.html", "report/figures", "report/trials.csv"} <= logged
    figures = {f.path for f in store.client.list_artifacts(second, "report/figures")}
    assert {f"report/figures/{p.name}" for p in summary.figures.values()} == figures
    # The headline, per configuration, as the parent run's metrics (comparable across studies in the UI).
    metrics = store.client.get_run(second).data.metrics
    label = next(k for k in summary.headline if "γ=1" in k and "k=10" in k)
    config = " ".join(part.replace("=", "_").replace("—", "") for part in label.split(" · "))
    assert config.startswith("k_10 γ_1 selection_none"), config
    acc = summary.headline[label]["accuracy"]
    assert metrics[f"accuracy.{config}"] == pytest.approx(acc.estimate)
    assert (metrics[f"accuracy.{config}.ci_low"], metrics[f"accuracy.{config}.ci_high"]) == pytest.approx(
        (acc.low, acc.high)
    )
    assert metrics[f"n_trials.{config}"] == summary.headline[label]["n_trials"]
    assert sum(k.startswith("n_trials.") for k in metrics) == len(summary.headline)


def test_unknown_or_empty_experiment_is_a_clear_error(study):
    store = study[0]
    with pytest.raises(ReportError, match="no experiment named 'nope'.*synthetic-study"):
        build_report("nope", tracking_uri=store.uri, log_to_mlflow=False)
    with pytest.raises(ReportError, match="'empty-study' has no trial runs"):
        build_report(EMPTY, tracking_uri=store.uri, log_to_mlflow=False)


def test_cli(study, tmp_path):
    store = study[0]
    assert [c.name for c in report_app.registered_commands] == ["report"]
    args = ["--experiment", "nope", "--tracking-uri", store.uri, "--out", str(tmp_path)]
    result = CliRunner().invoke(report_app, args)
    assert result.exit_code == 2
    assert "error: no experiment named 'nope'" in result.output
    args = ["--experiment", FAILED, "--tracking-uri", store.uri, "--out", str(tmp_path), "--no-log"]
    result = CliRunner().invoke(report_app, args)
    assert result.exit_code == 0, result.output
    assert "sections: headline" in result.output and "skipped fig3: no finished trial" in result.output
    assert (tmp_path / "report.html").is_file()


def test_study_whose_trials_all_failed_reports_only_the_overview(study, tmp_path):
    store = study[0]
    summary = build_report(FAILED, tracking_uri=store.uri, out_dir=tmp_path, log_to_mlflow=False)
    assert summary.sections == ["headline"]
    assert (summary.n_trials, summary.n_failed) == (1, 1)
    assert set(summary.skipped.values()) == {"no finished trial"}
    assert summary.logged_run_id is None and not summary.figures
    assert "0 finished, 1 failed" in summary.markdown.read_text()


def test_figure5_needs_two_featured_facts_per_model(study, tmp_path):
    store = study[0]
    exp = store.experiment("one-featured-fact")
    recs = _records(np.random.default_rng(3), 0, 1, 1.0)
    save = lambda p: np.savez(  # noqa: E731
        p,
        features=np.ones((1, 8), dtype=np.float32),
        dist_old=recs["dist_old"].to_numpy(),
        fact_ids=recs["fact_id"].to_numpy().astype(str),
    )
    store.trial(exp, store.parent(exp), "single-s0", {"k": 1, "sampling": 0}, recs, analysis={"features.npz": save})
    summary = build_report("one-featured-fact", tracking_uri=store.uri, out_dir=tmp_path, log_to_mlflow=False)
    assert summary.skipped["fig5"].startswith("fewer than 2 facts with logged features per model")
    assert "fig5" not in summary.figures


def test_labels_round_swept_floats_and_single_trials_say_no_ci():
    from raysem.report.analysis import fmt_value
    from raysem.report.format import ci_text as _ci_text
    from raysem.report.stats import Estimate

    assert fmt_value(0.2153133598719359) == "0.2153" and fmt_value(2.0) == "2" and fmt_value(1e-5) == "1e-05"
    assert fmt_value(float("nan")) == "—" and fmt_value("lora") == "lora"
    assert _ci_text(Estimate(0.6, float("nan"), float("nan")), 1) == "0.60 (n = 1, no CI)"
    assert _ci_text(Estimate(0.6, 0.5, 0.7), 5) == "0.60 [0.50, 0.70]"


def test_band_contrast_pools_facts_per_band_and_differences_from_medium():
    from raysem.report.analysis import band_contrast

    # run r1: 0.05 hit (below), 0.2 miss (short), 0.4 hit, 0.4 hit (medium), 0.8 miss (long)
    # run r2: 0.2 hit (short), 0.5 miss (medium), 0.9 miss, 1.3 hit (long once clipped), NaN (no distance)
    records = pd.DataFrame(
        {
            "run_id": ["r1"] * 5 + ["r2"] * 5,
            "dist_old": [0.05, 0.2, 0.4, 0.4, 0.8, 0.2, 0.5, 0.9, 1.3, float("nan")],
            "exact_match": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
        }
    )
    (row,) = band_contrast(records, []).to_dict("records")
    assert (row["n_below"], row["n_short"], row["n_medium"], row["n_long"], row["n_trials"]) == (1, 2, 3, 3, 2)
    assert (row["below"].estimate, row["short"].estimate) == (1.0, 0.5)
    assert row["medium"].estimate == pytest.approx(2 / 3) and row["long"].estimate == pytest.approx(1 / 3)
    assert row["short_minus_medium"].estimate == pytest.approx(0.5 - 2 / 3)
    assert row["long_minus_medium"].estimate == pytest.approx(1 / 3 - 2 / 3)
    assert row["below_minus_medium"].estimate == pytest.approx(1 - 2 / 3)


def test_decile_contrast_cuts_the_models_own_distances_and_targets_have_kinds():
    from raysem.report.analysis import decile_contrast

    # 20 distinct facts at 0.00, 0.05, ..., 0.95: deciles of two facts each; the middle 40% is 0.30–0.65.
    # Run r1 holds facts 0–9, run r2 facts 10–19 and fact 0 again (a fact sampled twice counts once for the cuts).
    dist = np.arange(20) * 0.05
    hit = np.zeros(20)
    hit[[0, 6, 7, 8]] = 1.0  # bottom: 0.00 hit, 0.05 miss; middle (facts 6–13): 3 of 8; top (18, 19): none
    records = pd.DataFrame(
        {
            "run_id": ["r1"] * 10 + ["r2"] * 11,
            "fact_id": [*range(20), 0],
            "dist_old": [*dist, 0.0],
            "exact_match": [*hit, 0.0],
            "panel": "p",
        }
    )
    (row,) = decile_contrast(records, [], ["panel"]).to_dict("records")
    assert row["q10"] == pytest.approx(0.095) and row["q90"] == pytest.approx(0.855)
    assert (row["n_bottom"], row["n_middle"], row["n_top"], row["n_trials"]) == (3, 8, 2, 2)
    assert row["bottom"].estimate == pytest.approx(1 / 3) and row["middle"].estimate == pytest.approx(3 / 8)
    assert row["bottom_minus_middle"].estimate == pytest.approx(1 / 3 - 3 / 8)
    assert row["top_minus_middle"].estimate == pytest.approx(-3 / 8)
    kinds = [target_kind(t) for t in ("1987", "March", "3 km", "Mayor of Paris", "Paris", "May 1990")]
    assert kinds == ["number or date"] * 3 + ["entity"] * 2 + ["number or date"]


def test_param_importances_find_the_parameter_that_matters():
    from raysem.report.analysis import param_importances

    rng = np.random.default_rng(0)
    trials = pd.DataFrame({"gamma": rng.uniform(0, 2, 30), "filter_lambda": rng.uniform(0, 4, 30)})
    trials["trained_accuracy"] = 0.2 + 0.1 * trials["gamma"] + rng.normal(0, 0.005, 30)
    importances = param_importances(trials, "trained_accuracy", ["gamma", "filter_lambda"], "max")
    assert set(importances) == {"gamma", "filter_lambda"} and importances["gamma"] > 0.8
    assert param_importances(trials.head(4), "trained_accuracy", ["gamma", "filter_lambda"], "max") == {}
    assert param_importances(trials, "trained_accuracy", ["gamma"], "max") == {}


def test_trials_of_different_identities_are_not_pooled_under_one_configuration():
    """Two fingerprints under one configuration label (a spec changed under the same name) are refused; trials
    logged before identities (none) and different configurations are not compared."""
    from raysem.report.data import check_identities

    frame = pd.DataFrame(
        {
            "group": ["gamma=0.0", "gamma=0.0", "gamma=1.0", "gamma=1.0"],
            "k": [10, 10, 10, 10],
            "fingerprint": ["aaaa", "aaaa", "bbbb", "none"],
        }
    )
    check_identities(frame)
    frame.loc[1, "fingerprint"] = "cccc"
    with pytest.raises(ReportError, match=r"would be pooled: gamma=0\.0 \(k = 10\): aaaa, cccc"):
        check_identities(frame)


def test_one_random_arm_pairs_with_every_filter_setting():
    """Random replacement reads no λ: run once (at λ = 1), its trials pair with the filter's at λ = 0 and
    λ = 100 alike; a random trial at a ρ the filter did not run keeps its own series."""
    from raysem.report.analysis import FILTER_ONLY, filter_effect, share_random_arm, varying
    from raysem.report.format import with_labels

    rows = [
        ("filter", lam, 0.6, s, acc)
        for lam, accs in ((0.0, (0.5, 0.7)), (100.0, (0.1, 0.3)))
        for s, acc in enumerate(accs)
    ]
    rows += [("random", 1.0, 0.6, s, acc) for s, acc in enumerate((0.2, 0.4))] + [("random", 1.0, 0.2, 0, 0.9)]
    trials = pd.DataFrame(rows, columns=["filter_mode", "filter_lambda", "replace", "sampling", "accuracy"])
    trials = trials.assign(dataset="zsre", seed=trials["sampling"], filter_sigma="variance", mean_min=0.1, mean_max=0.9)
    series = varying(trials, FILTER_ONLY)
    assert series == ["filter_lambda"]
    shared = share_random_arm(trials, series)
    assert len(shared) == 4 + 2 * 2 + 1  # each ρ = 0.6 random trial joins both filter series; ρ = 0.2 keeps λ = 1
    effect = filter_effect(with_labels(shared, ["dataset"], series), ["panel", "series"]).set_index(
        ["series", "replace"]
    )
    assert set(effect.index) == {("λ=0", 0.6), ("λ=100", 0.6), ("λ=1", 0.2)}
    assert effect.loc[("λ=0", 0.6), "delta"]["delta"] == pytest.approx(0.3)
    assert effect.loc[("λ=100", 0.6), "delta"]["delta"] == pytest.approx(-0.1)
    assert effect.loc[("λ=0", 0.6), "delta"]["n_pairs"] == 2 and effect.loc[("λ=1", 0.2), "n_random"] == 1
    # a random arm run at every λ is already paired by its own value and left as it is
    both = pd.concat([trials, trials[trials["filter_mode"] == "random"].assign(filter_lambda=0.0)], ignore_index=True)
    assert share_random_arm(both, series).equals(both)


def test_a_param_logged_later_reads_as_the_value_earlier_trials_ran_with(tmp_path):
    """Trials logged before ``filter_sigma`` existed ran with σ read as a variance: extended by newer trials that
    log it, the study stays one configuration instead of splitting into σ=variance and σ=—."""
    from raysem.report.analysis import CONFIG_COLUMNS, varying
    from raysem.report.data import trial_table

    client = MlflowClient(new_store(tmp_path))
    exp = client.create_experiment("extended", artifact_location=(tmp_path / "artifacts").as_uri())
    for sampling, extra in ((0, {}), (1, {"filter_sigma": "variance"})):
        run = client.create_run(exp, tags={"raysem.role": "trial", "raysem.trial_key": f"s{sampling}"})
        params = {"method": "lora", "k": 100, "sampling": sampling, "seed": sampling, "filter_mode": "none", **extra}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
    trials = trial_table(client.search_runs([exp]))
    assert list(trials["filter_sigma"]) == ["variance", "variance"]
    assert "filter_sigma" not in varying(trials, CONFIG_COLUMNS)
