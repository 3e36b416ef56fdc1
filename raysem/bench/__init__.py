"""Benchmarks and fault drills, above the service layer: trials per hour and MFU (``training``), the GPU check
(``gpu_check``), MLflow throughput (``tracking``) and exactly-once under faults (``chaos``). No product
module imports this package; ``raysem bench`` does, lazily."""
