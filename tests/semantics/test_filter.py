"""The data filter (Eq. 4): hand-checked greedy choices, an exhaustive-search reference, the bounds, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysem.semantics.filter import greedy_filter, random_filter, replace_training_set, replacement_count, set_stats

K_IDS, K_DIST = ["a", "b", "c"], [0.2, 0.4, 0.6]
P_IDS, P_DIST = ["p", "q", "r"], [0.0, 0.5, 1.0]


def _brute_force_greedy(k_ids, k_dist, p_ids, p_dist, count, lam, lo=-math.inf, hi=math.inf, sigma="variance"):
    """Each step tries every (member, pool fact) pair and keeps the best resulting set, preferring
    sets from which the bounds stay reachable, then sets that meet them, then the smaller violation."""
    cur = dict(zip(k_ids, k_dist))
    pool = dict(zip(p_ids, p_dist))
    removable = set(k_ids)
    objectives = []
    for step in range(1, count + 1):
        left = count - step
        best = None
        for r in sorted(removable):
            for a in sorted(pool):
                values = [v for i, v in cur.items() if i != r] + [pool[a]]
                stats = set_stats(values, lam, sigma)
                mu, n = stats["mean"], len(values)
                fixed = sum(cur[i] for i in cur if i not in removable) + pool[a]
                still = sorted(cur[i] for i in removable if i != r)
                rest = sorted(v for i, v in pool.items() if i != a)
                kept = len(still) - left
                low = (fixed + sum(still[:kept]) + sum(rest[:left])) / n
                high = (fixed + sum(still[len(still) - kept :]) + sum(rest[len(rest) - left :])) / n
                key = (not (low < hi and high > lo), not lo < mu < hi, max(lo - mu, mu - hi, 0.0), stats["objective"])
                if best is None or key < best[0]:
                    best = (key, r, a)
        _, r, a = best
        del cur[r]
        cur[a] = pool.pop(a)
        removable.discard(r)
        objectives.append(best[0][3])
    return objectives, set(cur)


def test_replacement_count_rounds_half_up():
    assert replacement_count(100, 0.6) == 60
    assert replacement_count(10, 0.25) == 3
    assert replacement_count(3, 1 / 3) == 1
    assert replacement_count(7, 0.0) == 0
    assert replacement_count(7, 1.0) == 7


def test_set_stats_uses_population_variance():
    stats = set_stats([0.2, 0.6, 0.0], lam=4.0)
    assert stats["mean"] == pytest.approx(4 / 15)
    assert stats["var"] == pytest.approx(14 / 225)
    assert stats["objective"] == pytest.approx(4 / 225)


def test_greedy_without_variance_weight_removes_largest_and_adds_smallest():
    result = greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=0.0)
    assert result.trace[0]["removed"] == "c" and result.trace[0]["added"] == "p"
    assert result.train_ids == ["a", "b", "p"]
    assert result.after["mean"] == pytest.approx(0.2)
    assert result.before["mean"] == pytest.approx(0.4)


def test_greedy_with_variance_weight_spreads_the_set():
    # λ = 4: swapping b (0.4) for p (0.0) gives {0.2, 0.6, 0.0}: μ = 4/15, σ² = 14/225,
    # objective 4/225 ≈ 0.0178; the next best, c → r, gives 8/15 - 4·(26/225) ≈ 0.0711.
    result = greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=4.0)
    step = result.trace[0]
    assert (step["removed"], step["added"]) == ("b", "p")
    assert step["objective"] == pytest.approx(4 / 225)
    assert result.after == pytest.approx({"mean": 4 / 15, "var": 14 / 225, "objective": 4 / 225})
    assert result.before["objective"] == pytest.approx(0.4 - 4 * (0.08 / 3))


def test_greedy_respects_mean_bounds_by_hand():
    # With 0.3 < μ < 0.5 the only feasible swaps are a→p (μ 1/3, objective 0.76/9),
    # c→q (μ 11/30) and b→q (μ 13/30); a→q gives μ = 0.5 exactly, which the strict bound excludes.
    result = greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=4.0, mean_min=0.3, mean_max=0.5)
    assert (result.trace[0]["removed"], result.trace[0]["added"]) == ("a", "p")
    assert result.after["objective"] == pytest.approx(0.76 / 9)
    assert 0.3 < result.after["mean"] < 0.5


def test_sigma_as_a_standard_deviation_changes_the_choice_by_hand():
    # λ = 1. Variance: c → p gives {0.2, 0.4, 0.0}, 0.2 - 0.08/3 ≈ 0.173, below b → p's 4/15 - 14/225 ≈ 0.204.
    # Standard deviation: b → p gives 4/15 - √14/15 ≈ 0.0172, below c → p's 0.2 - √(0.08/3) ≈ 0.0367.
    by_var = greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=1.0)
    by_std = greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=1.0, sigma="std")
    assert (by_var.trace[0]["removed"], by_var.trace[0]["added"]) == ("c", "p")
    assert by_var.after["objective"] == pytest.approx(0.2 - 0.08 / 3)
    assert (by_std.trace[0]["removed"], by_std.trace[0]["added"]) == ("b", "p")
    assert by_std.after == pytest.approx({"mean": 4 / 15, "var": 14 / 225, "objective": 4 / 15 - math.sqrt(14) / 15})
    rand = random_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, seed=0, lam=1.0, sigma="std")
    assert rand.after["objective"] == pytest.approx(rand.after["mean"] - math.sqrt(rand.after["var"]))
    with pytest.raises(ValueError, match="sigma must be 'variance' or 'std', got 'sd'"):
        greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, replace=1 / 3, lam=1.0, sigma="sd")  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", ["variance", "std"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("bounds", [(None, None), (0.35, 0.45), (0.5, None)])
def test_greedy_matches_exhaustive_pair_search(lam, bounds, sigma):
    rng = np.random.default_rng(7)
    for trial in range(4):
        k_dist = rng.beta(2, 3, size=8)
        p_dist = rng.beta(2, 3, size=30)
        k_ids = [f"k{i}" for i in range(8)]
        p_ids = [f"s{i}" for i in range(30)]
        lo = -math.inf if bounds[0] is None else bounds[0]
        hi = math.inf if bounds[1] is None else bounds[1]
        try:
            result = greedy_filter(
                k_ids, k_dist, p_ids, p_dist, replace=0.5, lam=lam, mean_min=bounds[0], mean_max=bounds[1], sigma=sigma
            )
        except ValueError:
            continue
        objectives, final = _brute_force_greedy(k_ids, k_dist, p_ids, p_dist, 4, lam, lo, hi, sigma)
        assert [t["objective"] for t in result.trace] == pytest.approx(objectives, abs=1e-12), trial
        assert set(result.train_ids) == final


def test_greedy_never_worse_than_random_over_seeds():
    pool_rng = np.random.default_rng(123)
    dist = pool_rng.beta(2, 3, size=600)
    ids = [f"f{i}" for i in range(600)]
    for seed in range(12):
        rng = np.random.default_rng(seed)
        k = rng.choice(600, size=50, replace=False)
        in_k = np.zeros(600, dtype=bool)
        in_k[k] = True
        args = ([ids[i] for i in k], dist[k], [ids[i] for i in np.flatnonzero(~in_k)], dist[~in_k])
        for lam in (0.0, 1.0, 5.0):
            greedy = greedy_filter(*args, replace=0.6, lam=lam)
            rand = random_filter(*args, replace=0.6, seed=seed, lam=lam)
            assert len(greedy.trace) == len(rand.trace) == 30
            assert greedy.after["objective"] <= rand.after["objective"], (seed, lam)
            assert greedy.after["objective"] < greedy.before["objective"]


def test_swaps_never_undo_each_other():
    rng = np.random.default_rng(3)
    k_ids, p_ids = [f"k{i}" for i in range(20)], [f"s{i}" for i in range(100)]
    result = greedy_filter(k_ids, rng.random(20), p_ids, rng.random(100), replace=1.0, lam=2.0)
    assert len(set(result.removed)) == len(result.removed) == 20 and set(result.removed) == set(k_ids)
    assert len(set(result.added)) == 20 and set(result.added) <= set(p_ids)
    assert set(result.train_ids) == set(result.added)
    assert [t["step"] for t in result.trace] == list(range(1, 21))


def test_bounds_hold_or_filter_raises():
    rng = np.random.default_rng(11)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(60):
        k_dist, p_dist = rng.beta(2, 3, size=10), rng.beta(2, 3, size=40)
        lo = float(rng.uniform(0.0, 0.6))
        hi = lo + float(rng.uniform(0.01, 0.3))
        rho = float(rng.choice([0.0, 0.2, 0.5, 1.0]))
        try:
            result = greedy_filter(
                [f"k{i}" for i in range(10)],
                k_dist,
                [f"s{i}" for i in range(40)],
                p_dist,
                replace=rho,
                lam=1.0,
                mean_min=lo,
                mean_max=hi,
            )
        except ValueError as exc:
            assert f"Mean_min={lo} < μ < Mean_max={hi}" in str(exc)
            outcomes["error"] += 1
            continue
        assert lo < result.after["mean"] < hi
        outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


def test_random_baseline_is_seeded_and_uses_unused_pool_facts():
    rng = np.random.default_rng(5)
    k_ids, p_ids = [f"k{i}" for i in range(10)], [f"s{i}" for i in range(30)]
    k_dist, p_dist = rng.random(10), rng.random(30)
    first = random_filter(k_ids, k_dist, p_ids, p_dist, replace=0.4, seed=9)
    again = random_filter(k_ids, k_dist, p_ids, p_dist, replace=0.4, seed=9)
    other = random_filter(k_ids, k_dist, p_ids, p_dist, replace=0.4, seed=10)
    assert first.train_ids == again.train_ids and first.train_ids != other.train_ids
    assert len(first.added) == 4 and set(first.added) <= set(p_ids) and len(set(first.added)) == 4
    assert sum(i in k_ids for i in first.train_ids) == 6
    lookup = dict(zip(k_ids + p_ids, list(k_dist) + list(p_dist)))
    assert first.after["mean"] == pytest.approx(np.mean([lookup[i] for i in first.train_ids]))


def test_undefined_pool_distances_are_excluded_and_counted():
    p_dist = [math.nan, 0.0, math.nan, 0.9]
    result = greedy_filter(K_IDS, K_DIST, ["x", "y", "z", "w"], p_dist, replace=2 / 3, lam=0.0)
    assert result.excluded_pool == ["x", "z"]
    assert set(result.added) == {"y", "w"}
    rand = random_filter(K_IDS, K_DIST, ["x", "y", "z", "w"], p_dist, replace=2 / 3, seed=0)
    assert rand.excluded_pool == ["x", "z"] and set(rand.added) == {"y", "w"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"replace": 0.5, "lam": -0.1}, "lambda (λ) must be a finite number >= 0, got -0.1"),
        ({"replace": 0.5, "lam": math.nan}, "got nan"),
        ({"replace": 1.5, "lam": 1.0}, "replace (ρ) must be in [0, 1], got 1.5"),
        ({"replace": -0.1, "lam": 1.0}, "replace (ρ) must be in [0, 1], got -0.1"),
        ({"replace": 0.5, "lam": 1.0, "mean_min": 0.5, "mean_max": 0.5}, "Mean_min=0.5 >= Mean_max=0.5"),
        ({"replace": 0.5, "lam": 1.0, "mean_min": 0.6, "mean_max": 0.2}, "Mean_min=0.6 >= Mean_max=0.2"),
        (
            {"replace": 1 / 3, "lam": 1.0, "mean_min": 0.8},
            "meets Mean_min=0.8 < μ: reachable means span [0.2, 0.666667]",
        ),
        ({"replace": 0.0, "lam": 1.0, "mean_max": 0.3}, "μ < Mean_max=0.3: reachable means span [0.4, 0.4]"),
    ],
)
def test_invalid_settings_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        greedy_filter(K_IDS, K_DIST, P_IDS, P_DIST, **kwargs)
    assert message in str(info.value)


def test_more_replacements_than_usable_pool_raises():
    with pytest.raises(ValueError, match=r"asks for 3 replacements but the pool has only 2 usable facts \(1 excluded"):
        greedy_filter(K_IDS, K_DIST, P_IDS, [0.1, math.nan, 0.3], replace=1.0, lam=0.0)
    with pytest.raises(ValueError, match="asks for 3 replacements"):
        random_filter(K_IDS, K_DIST, ["x"], [0.1], replace=1.0, seed=0)


def test_inconsistent_inputs_raise():
    with pytest.raises(ValueError, match="shared ids: \\['a'\\]"):
        greedy_filter(K_IDS, K_DIST, ["a", "q"], [0.1, 0.2], replace=0.3, lam=0.0)
    with pytest.raises(ValueError, match="without a finite target distance"):
        greedy_filter(K_IDS, [0.2, math.nan, 0.6], P_IDS, P_DIST, replace=0.3, lam=0.0)
    with pytest.raises(ValueError, match="3 training ids but 2 training distances"):
        greedy_filter(K_IDS, [0.2, 0.4], P_IDS, P_DIST, replace=0.3, lam=0.0)


# ---------------------------------------------------------------------------------------------
# `raysem filter`
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def table(tmp_path):
    """A distance table of 40 facts with known distances (two of them undefined)."""
    import pandas as pd

    from raysem.semantics.tables import write_table

    rng = np.random.default_rng(0)
    dist = rng.beta(2, 3, size=40)
    dist[[5, 17]] = np.nan
    frame = pd.DataFrame(
        {
            "fact_id": [f"f{i}" for i in range(40)],
            "prompt": [f"q{i}?" for i in range(40)],
            "target": [f"t{i}" for i in range(40)],
            "y_old": ["" if np.isnan(d) else "a" for d in dist],
            "y_old_raw": ["a"] * 40,
            "dist_old": dist,
            "target_tokens": [1] * 40,
            "prompt_tokens": [5] * 40,
            "y_old_empty": np.isnan(dist),
            "locality_base": [["x"]] * 40,
        }
    )
    return write_table(frame, tmp_path / "table.parquet", {}), dict(zip(frame["fact_id"], dist))


def _invoke(args):
    from typer.testing import CliRunner

    from raysem.cli.semantic import semantic_app

    return CliRunner().invoke(semantic_app, ["filter", *args])


def test_cli_filter_json_matches_the_library(table):
    import json

    from raysem.data.sampling import sample_facts

    path, dist = table
    result = _invoke(
        ["--table", str(path), "--size", "10", "--replace", "0.6", "--lambda", "2", "--seed", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    defined = [i for i, d in dist.items() if not math.isnan(d)]
    k = sample_facts(defined, 10, 3)
    assert payload["test_ids"] == k
    pool = [i for i in dist if i not in set(k)]
    expected = greedy_filter(k, [dist[i] for i in k], pool, [dist[i] for i in pool], replace=0.6, lam=2.0)
    assert payload["train_ids"] == expected.train_ids and len(payload["added"]) == 6
    assert payload["after"] == pytest.approx(expected.after) and payload["excluded_pool"] == ["f5", "f17"]

    rand = _invoke(["--table", str(path), "--size", "10", "--replace", "0.6", "--random", "--seed", "3", "--json"])
    assert rand.exit_code == 0, rand.output
    assert json.loads(rand.stdout)["method"] == "random"

    text = _invoke(
        [
            "--table",
            str(path),
            "--size",
            "10",
            "--replace",
            "0.6",
            "--lambda",
            "2",
            "--seed",
            "3",
            "--mean-min",
            "0.2",
            "--mean-max",
            "0.3",
        ]
    )
    assert text.exit_code == 0, text.output
    assert "before" in text.stdout and "after" in text.stdout and "training set:" in text.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "10", "--replace", "1.5"], "replace (ρ) must be in [0, 1], got 1.5"),
        (["--size", "10", "--replace", "0.5", "--lambda", "-1"], "lambda (λ) must be a finite number >= 0, got -1.0"),
        (
            ["--size", "10", "--replace", "0.5", "--mean-min", "0.5", "--mean-max", "0.4"],
            "Mean_min=0.5 >= Mean_max=0.4",
        ),
        (["--size", "10", "--replace", "0.5", "--mean-min", "0.95"], "no training set reachable with 5 replacements"),
        (["--size", "30", "--replace", "1.0"], "asks for 30 replacements but the pool has only 8 usable facts"),
        (["--size", "39", "--replace", "0.1"], "--size 39 is larger than the 38 facts with a target distance"),
        (["--size", "10", "--replace", "0.5", "--random", "--mean-max", "0.4"], "apply to the greedy filter"),
    ],
)
def test_cli_filter_errors(table, args, message):
    result = _invoke(["--table", str(table[0]), "--seed", "0", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_cli_filter_missing_table(tmp_path):
    result = _invoke(["--table", str(tmp_path / "none.parquet"), "--size", "3", "--replace", "0.5"])
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("mode", ["filter", "random"])
def test_members_without_a_distance_stay_in_the_training_set(mode):
    """An empty y_old (NaN distance) in K neither fails the trial nor takes part in the filter: the member
    stays, is listed, and ρ applies to the others; pool facts without one are left out and listed."""
    k_ids, k_dist = ["a", "b", "e", "c", "d"], [0.2, 0.9, math.nan, 0.6, 0.4]
    p_ids, p_dist = ["p", "q", "x", "r"], [0.05, 0.5, math.nan, 0.1]
    with pytest.raises(ValueError, match="without a finite target distance"):
        (greedy_filter if mode == "filter" else random_filter)(
            k_ids, k_dist, p_ids, p_dist, replace=0.5, **({"lam": 0.0} if mode == "filter" else {"seed": 1})
        )
    result = replace_training_set(mode, k_ids, k_dist, p_ids, p_dist, replace=0.5, seed=1)
    assert result.kept_undefined == ["e"] and result.excluded_pool == ["x"]
    assert "e" in result.train_ids and len(result.train_ids) == 5 and len(result.removed) == 2  # round(0.5 · 4)
    assert not set(result.removed) & {"e"} and not set(result.added) & {"x"}
    if mode == "filter":  # λ = 0: the two largest members go, the two smallest pool facts come
        assert sorted(result.removed) == ["b", "c"] and sorted(result.added) == ["p", "r"]
    with pytest.raises(ValueError, match="filter mode"):
        replace_training_set("greedy", k_ids, k_dist, p_ids, p_dist, replace=0.5)
