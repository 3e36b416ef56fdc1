"""Compute a target-distance table as a Ray Data job and store it in the raysem cache.

    python jobs/distance_table.py --spec jobs/distance_table.yaml [--quick] [--refresh] [--address ADDR]
    ray job submit --working-dir . -- python jobs/distance_table.py --spec jobs/distance_table.yaml

Connects to ``--address`` or ``RAY_ADDRESS`` when given, otherwise ``ray.init()`` finds or starts a
local Ray. Prints one JSON object: the table's summary (count, mean, std, min, max, empty), its
path and the wall time. Spec errors exit with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

QUICK_LIMIT = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="YAML file: model, dataset, limit, batch_size, actors")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_LIMIT} facts on one actor (a smoke run)")
    parser.add_argument("--refresh", action="store_true", help="recompute even when the table is cached")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    args = parser.parse_args(argv)

    from raysem.data.facts import DatasetError
    from raysem.models.device import planned_dtype
    from raysem.semantics.tables import distance_table_ray, summary
    from raysem.service.spec import DistanceTableSpec, SpecError, load_spec

    try:
        spec = load_spec(args.spec, kind=DistanceTableSpec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        spec = spec.model_copy(update={"limit": min(spec.limit or QUICK_LIMIT, QUICK_LIMIT), "actors": 1})

    import ray

    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    try:
        frame, path = distance_table_ray(
            spec.model,
            spec.dataset,
            limit=spec.limit,
            batch_size=spec.batch_size,
            actors=spec.actors,
            refresh=args.refresh,
            prompting=spec.prompting,
            resources=spec.resources(),
            dtype=planned_dtype(spec.precision, gpu=spec.gpu > 0),
        )
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    report = {**summary(frame), "path": str(path), "seconds": round(time.perf_counter() - start, 3)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
