"""Entry point shared by the study jobs in ``jobs/``: load a spec, run the study on Ray, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raysem.service.spec import SpecError, load_spec


def job_main(description: str | None = None, argv: list[str] | None = None) -> int:
    """``python jobs/<study>.py --spec jobs/<study>.yaml [--quick] [--resume] [--address A]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", required=True, help="study spec YAML")
    parser.add_argument("--quick", action="store_true", help="apply the spec's quick overrides (minutes on 2 CPUs)")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted study with Tuner.restore")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides the spec)")
    parser.add_argument("--storage", default=None, help="Ray storage path (overrides the spec)")
    parser.add_argument(
        "--report-dir", default=None, help="where the report goes (default: <storage>/../reports/<name>)"
    )
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--new-experiment",
        action="store_true",
        help="if the spec's identity (model, data, trial settings, ...) differs from its experiment's, run it as "
        "<name>-<fingerprint> in a new experiment instead of refusing it",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one spec field, dotted path and YAML value (e.g. sampling.n_samplings=20); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_sets(args.sets)
    except SpecError as exc:
        print(f"raysem: {exc}", file=sys.stderr)
        return 2
    if args.tracking_uri:
        overrides.setdefault("tracking", {})["uri"] = args.tracking_uri
    if args.storage:
        overrides["storage_path"] = args.storage
    try:
        spec = load_spec(args.spec, quick=args.quick, overrides=overrides)
    except SpecError as exc:
        print(f"raysem: spec error: {exc}", file=sys.stderr)
        return 2

    from raysem.service.interrupt import StudyInterrupted
    from raysem.service.study import ResourceError, run_study

    try:
        outcome = run_study(spec, address=args.address, resume=args.resume, new_experiment=args.new_experiment)
    except (ResourceError, SpecError) as exc:
        print(f"raysem: {exc}", file=sys.stderr)
        return 2
    except StudyInterrupted as exc:
        print(f"raysem: study {spec.name}: {exc}", file=sys.stderr)
        return 130
    rate = outcome.ran / outcome.wall_s * 3600 if outcome.wall_s else 0.0
    print(
        f"raysem: study {outcome.name}: {outcome.trials} trials, {outcome.ran} run now in {outcome.wall_s:.1f} s ({rate:,.0f} trials/hour); "
        f"MLflow experiment {outcome.experiment!r} at {outcome.tracking_uri}"
    )
    if outcome.best_point is not None:
        from raysem.report.analysis import fmt_value

        best = ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(outcome.best_point.items()))
        confirm = spec.search.confirm
        print(
            f"raysem: best point by {spec.objective}: {best}; "
            + (
                f"confirmed with the baseline on {confirm.n_samplings} fresh samplings (seed {confirm.seed})"
                if confirm
                else "NOT confirmed (no search.confirm): its number comes from the samplings it was chosen on"
            )
        )
    if outcome.pending:
        print(f"raysem: {outcome.pending} trial results wait in {outcome.storage / 'pending'}; run `raysem sync`")
    if spec.report and not args.no_report and outcome.parent_run_id:
        from raysem.report.build import build_report

        out = Path(args.report_dir) if args.report_dir else outcome.storage.parent / "reports" / outcome.name
        summary = build_report(outcome.experiment, tracking_uri=outcome.tracking_uri, out_dir=out)
        print(f"raysem: report written to {out}\n{summary.describe()}")
    return 0


def parse_sets(items: list[str]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in items:
        path, sep, text = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise SpecError(
                f"--set {item!r}: expected FIELD=VALUE with a dotted field path, e.g. sampling.n_samplings=20"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r}: {key!r} was already set to a value, not a mapping")
        node[keys[-1]] = value
    return out


def run_as_script(module_name: str, description: str | None) -> None:
    """Run ``job_main`` when a job file is executed as a script."""
    if module_name == "__main__":
        sys.exit(job_main(description))
