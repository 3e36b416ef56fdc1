"""Study specs: validation errors name the field and value; expansion into units and trials."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from raysem.service.planning import count_trials, expand_units, trial_key
from raysem.service.spec import SpecError, load_spec

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"name": "s", "trial": {"method": "dora"}}, "method"),
        ({"name": "s", "sweep": {"method": {"grid": ["lora", "prefix"]}}}, "'prefix'"),
        ({"name": "s", "trial": {"gamma": -0.5}}, "gamma"),
        ({"name": "s", "sweep": {"gamma": {"grid": [0.0, -1.0]}}}, "-1.0"),
        ({"name": "s", "filter": {"filter_lambda": -1}}, "filter_lambda"),
        ({"name": "s", "filter": {"mean_min": 0.6, "mean_max": 0.3}}, "mean_min (0.6)"),
        ({"name": "s", "filter": {"replace": 1.5}}, "replace"),
        ({"name": "s", "sweep": {"rank_of_doom": {"grid": [1]}}}, "rank_of_doom"),
        ({"name": "s", "resourcez": {}}, "resourcez"),
        ({"name": "s", "sweep": {"gamma": {"uniform": [0, 1]}}}, "grid search"),
        ({"name": "s", "prompt_style": "qa"}, "prompt_style"),
        ({"name": "s", "trial": {"optimizer": "adam"}}, "optimizer"),
        (
            {"name": "s", "sampling": {"k": 1}, "filter": {"filter_mode": "filter", "replace": 0.5}},
            "filter settings with k = 1",
        ),
        (
            {
                "name": "s",
                "sampling": {"k": 10},
                "sweep": {"k": {"grid": [1, 10]}, "filter_mode": {"grid": ["none", "random"]}},
            },
            "filter settings with k = 1",
        ),
        ({"name": "s", "sweep": {"lr": {"grid": ["fast"]}}}, "sweep.lr: Input should be a valid number"),
        (
            {"name": "s", "sweep": {"steps": {"grid": [5, 0]}}},
            "sweep.steps: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"name": "s", "sweep": {"k": {"grid": [0]}}}, "sweep.k: set sizes must be integers >= 1, got 0"),
        ({"name": "s", "sweep": {"k": {"grid": [2.5]}}}, "sweep.k"),
        (
            {"name": "s", "search": {"algorithm": "optuna"}, "sweep": {"gamma": {"uniform": [2.0, 0.0]}}},
            "sweep.gamma: ",
        ),
        (
            {"name": "s", "search": {"algorithm": "random"}, "sweep": {"lr": {"loguniform": [0.0, 0.1]}}},
            "loguniform bounds must be > 0",
        ),
        ({"name": "s", "search": {"algorithm": "random"}, "sweep": {"rank": {"randint": [8, 8]}}}, "sweep.rank: "),
        (
            {"name": "s", "search": {"algorithm": "random"}, "sweep": {"rank": {"randint": [0, 8]}}},
            "sweep.rank: Input should be greater",
        ),
        ({"name": "s", "sweep": {"gamma": {"grid": []}}}, "sweep.gamma: "),
        (
            {"name": "s", "trial": {"dropout": 0.1}},
            "pack_size: 8 packs single-fact LoRA trials, and packed trials need dropout 0",
        ),
        ({"name": "s", "sweep": {"dropout": {"grid": [0.0, 0.2]}}}, "dropout 0"),
        (
            {"name": "s", "trial": {"steps": 5}, "quick": {"trial": {"steps": 0}}},
            "with --quick: trial.steps: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"name": "s", "quick": {"sampling": {"k": 0}}}, "with --quick: sampling.k"),
        ({"name": "s", "trial": {"lr": float("nan")}}, "trial.lr: "),
        ({"name": "s", "sweep": {"mean_min": {"grid": ["low"]}}}, "sweep.mean_min"),
        ({"name": "s", "filter": {"filter_sigma": "sd"}}, "filter.filter_sigma"),
        ({"name": "s", "sweep": {"filter_sigma": {"grid": ["std", "sd"]}}}, "sweep.filter_sigma: 'sd' is not one of"),
        ({"name": "s", "trial": {"rank": 8, "rnak": 4}}, "trial.rnak: Extra inputs are not permitted"),
        ({"name": "s", "sweep": {"batch_size": {"grid": [0]}}, "sampling": {"k": 4}}, "sweep.batch_size"),
    ],
)
def test_spec_errors_name_field_and_value(tmp_path, data, needle):
    """Each bad spec is refused at load, before Ray starts (so before any worker), naming its field."""
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, data))
    assert needle in str(err.value)
    assert "spec.yaml" in str(err.value)


def test_spec_check_and_schema_commands(tmp_path):
    """``raysem spec check`` exits 2 naming the field, or prints the trials and units; ``spec schema`` describes every field."""
    from typer.testing import CliRunner

    from raysem.cli.main import app

    runner = CliRunner()
    bad = runner.invoke(
        app, ["spec", "check", str(write(tmp_path, {"name": "s", "sweep": {"lr": {"grid": ["fast"]}}}))]
    )
    assert bad.exit_code == 2 and "sweep.lr" in bad.output and "'fast'" in bad.output
    good = runner.invoke(
        app, ["spec", "check", str(JOBS / "reweight.yaml"), "--quick", "--set", "sampling.n_samplings=3"]
    )
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["name"] == "reweight"
    schema = json.loads(runner.invoke(app, ["spec", "schema"]).output)
    trial = schema["$defs"]["TrialSettings"]["properties"]
    assert "learning rate" in trial["lr"]["description"] and "pack_size" in schema["properties"]
    undescribed = [name for name, field in trial.items() if not field.get("description")]
    assert undescribed == [], undescribed


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_quick_overrides_merge_nested(tmp_path):
    data = {"name": "s", "sampling": {"k": 100, "n_samplings": 50, "seed": 7}, "quick": {"sampling": {"k": 10}}}
    spec = load_spec(write(tmp_path, data), quick=True)
    assert (spec.sampling.k, spec.sampling.n_samplings, spec.sampling.seed) == (10, 50, 7)


def test_gamma_on_single_adamw_facts_warns(tmp_path):
    from raysem.service.spec import GammaNoOpWarning

    with pytest.warns(GammaNoOpWarning, match="AdamW cancels a constant factor"):
        load_spec(write(tmp_path, {"name": "s", "sampling": {"k": 1}, "sweep": {"gamma": {"grid": [0.0, 1.0]}}}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", GammaNoOpWarning)
        load_spec(
            write(
                tmp_path,
                {
                    "name": "s",
                    "sampling": {"k": 1},
                    "trial": {"optimizer": "sgd"},
                    "sweep": {"gamma": {"grid": [0.0, 1.0]}},
                },
            )
        )
        load_spec(write(tmp_path, {"name": "s", "sampling": {"k": 5}, "sweep": {"gamma": {"grid": [0.0, 1.0]}}}))
        spec = load_spec(
            write(tmp_path, {"name": "s", "prompt_style": "chat", "answer_budget": "free", "free_tokens": 9})
        )
    assert spec.prompting.key() == {"prompt_style": "chat", "answer_budget": "free:9"}


def test_excluded_grid_points_are_left_out(tmp_path):
    data = {
        "name": "s",
        "sampling": {"k": 1, "n_samplings": 4, "per_k": {10: 2}},
        "sweep": {"k": {"grid": [1, 10]}, "gamma": {"grid": [0.0, 1.0]}},
        "exclude": [{"k": 1, "gamma": 1.0}],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # γ now acts only on the 10-fact sets
        spec = load_spec(write(tmp_path, data))
    assert spec.grid_points() == [{"gamma": 0.0, "k": 1}, {"gamma": 0.0, "k": 10}, {"gamma": 1.0, "k": 10}]
    assert count_trials(spec) == 4 + 2 + 2
    with pytest.raises(SpecError, match="exclude"):
        load_spec(write(tmp_path, {**data, "exclude": [{"rank": 4}]}))


def test_units_pack_single_fact_lora_and_count_trials(tmp_path):
    data = {
        "name": "s",
        "sampling": {"k": 1, "n_samplings": 10, "per_k": {10: 3}},
        "sweep": {"k": {"grid": [1, 10]}, "gamma": {"grid": [0.0, 1.0]}},
        "trial": {"optimizer": "sgd"},
        "pack_size": 4,
    }
    spec = load_spec(write(tmp_path, data))
    units = expand_units(spec)
    single = [u for u in units if u["point"]["k"] == 1]
    multi = [u for u in units if u["point"]["k"] == 10]
    assert sorted(len(u["samplings"]) for u in single) == [2, 2, 4, 4, 4, 4]
    assert all(len(u["samplings"]) == 1 for u in multi) and len(multi) == 6
    assert count_trials(spec) == 2 * 10 + 2 * 3
    # Sampling-major: both γ arms of a sampling come before the next sampling (a stopped study keeps pairs).
    order = [(u["point"]["k"], u["samplings"][0], u["point"]["gamma"]) for u in units]
    assert set(order[:4]) == {(1, 0, 0.0), (1, 0, 1.0), (10, 0, 0.0), (10, 0, 1.0)}
    assert [(s, g) for k, s, g in order if k == 10] == [(s, g) for s in range(3) for g in (0.0, 1.0)]


def test_trial_key_is_stable_and_distinguishes_points():
    a = trial_key({"gamma": 1.0}, 3, 10, "f0")
    assert a == trial_key({"gamma": 1.0}, 3, 10, "f0")
    others = [
        trial_key({"gamma": 0.0}, 3, 10, "f0"),
        trial_key({"gamma": 1.0}, 4, 10, "f0"),
        trial_key({"gamma": 1.0}, 3, 1, "f0"),
        trial_key({"gamma": 1.0}, 3, 10, "f1"),
        trial_key({"gamma": 1.0}, 3, 10, None),
    ]
    assert len({a, *others}) == 6


STUDY_SPECS = sorted(p for p in JOBS.glob("*.yaml") if p.name != "distance_table.yaml")


@pytest.mark.parametrize("path", STUDY_SPECS, ids=lambda p: p.name)
def test_every_job_spec_validates(path):
    from raysem.service.spec import GammaNoOpWarning

    for quick in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error", GammaNoOpWarning)  # no shipped study sweeps γ where it cannot act
            spec = load_spec(path, quick=quick)
        assert count_trials(spec) >= 1
        assert (JOBS / f"{path.stem}.py").exists()


def test_set_overrides_reach_the_spec_and_bad_ones_are_named():
    from raysem.service.job import parse_sets

    sets = ["sampling.n_samplings=20", "trial.lr=2e-3", "sweep.gamma.grid=[0, 1]", "tracking.experiment=repro"]
    spec = load_spec(Path("jobs/reweight.yaml").resolve(), overrides=parse_sets(sets))
    assert (spec.sampling.n_samplings, spec.sampling.seed, spec.trial.lr) == (20, 3, 2e-3)
    assert spec.sweep["gamma"].values() == [0, 1] and spec.experiment == "repro"
    with pytest.raises(SpecError, match=r"--set 'steps'.*FIELD=VALUE"):
        parse_sets(["steps"])
    with pytest.raises(SpecError, match=r"--set 'trial.lr.x=1'.*'lr' was already set"):
        parse_sets(["trial.lr=1", "trial.lr.x=1"])
    with pytest.raises(SpecError, match=r"trial\.lr: .*greater than 0"):
        load_spec(Path("jobs/reweight.yaml").resolve(), overrides=parse_sets(["trial.lr=-1"]))


def test_filter_sigma_enters_the_identity_only_away_from_the_variance(tmp_path):
    """Eq. 4's σ as a standard deviation is a new identity; the default keeps an older study's fingerprint."""
    from raysem.service.identity import fingerprint, study_identity

    data = {"name": "s", "sampling": {"k": 10}, "filter": {"filter_mode": "filter", "replace": 0.5}}
    default = study_identity(load_spec(write(tmp_path, data)), "sha")
    assert "filter_sigma" not in default["filter"] and default["filter"]["replace"] == 0.5
    std = load_spec(write(tmp_path, {**data, "filter": {**data["filter"], "filter_sigma": "std"}}))
    assert std.filter.filter_sigma == "std" and study_identity(std, "sha")["filter"]["filter_sigma"] == "std"
    assert fingerprint(study_identity(std, "sha")) != fingerprint(default)
