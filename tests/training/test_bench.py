"""The throughput benchmark: analytic FLOP count and one tiny end-to-end run of ``raysem bench --quick --json``."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from raysem.bench.training import variant_label
from raysem.cli.bench import bench_app, render_table
from raysem.training.config import TrialConfig
from raysem.training.flops import ModelShape

from conftest import shared_file


def test_flop_count_of_the_tiny_llama(tiny):
    shape = ModelShape.of(tiny, TrialConfig(rank=8, target_modules=("q_proj", "v_proj")))
    # per layer: q 64·64 + k 64·32 + v 64·32 + o 64·64 + gate/up/down 3·64·128; LoRA r·(in+out) on q and v
    assert shape.linear == 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)
    assert shape.lora == 2 * (8 * (64 + 64) + 8 * (64 + 32))
    assert (shape.layers, shape.attn_width, shape.hidden, shape.vocab) == (2, 64, 64, len(tiny.tokenizer))
    # 3 new tokens, no cache: linear + LoRA 2·(N+R)·3, causal attention 4·L·d_q·(1+2+3), logits at one position
    assert shape.forward(3, logits=1) == 2 * (73728 + 3584) * 3 + 4 * 2 * 64 * 6 + 2 * 64 * len(tiny.tokenizer)
    # one token after 5 cached ones, base model only
    assert shape.forward(1, past=5, lora=False) == 2 * 73728 + 4 * 2 * 64 * 6
    attention = 4 * 2 * 64 * 6
    backward = 2 * 73728 * 3 + 4 * 3584 * 3 + 2 * attention + 2 * 64 * len(tiny.tokenizer) * 2
    assert shape.train_step(3, 2) == shape.forward(3, logits=2) + backward
    # full fine-tuning adds the base weights' gradients: 2·N·T and the output head's 2·d·V·t
    assert (
        shape.train_step(3, 2, full=True) == shape.train_step(3, 2) + 2 * 73728 * 3 + 2 * 64 * len(tiny.tokenizer) * 2
    )
    assert ModelShape.of_model(tiny.model, TrialConfig(rank=8, target_modules=("q_proj", "v_proj"))) == shape
    assert shape.generate(4, 3) == shape.forward(4, logits=1) + shape.forward(1, 4, 1) + shape.forward(1, 5, 1)


def test_quick_bench_json(tiny_model_dir):
    shared_file("zsre/zsre_mend_eval_1037.json")  # the benchmark's facts are ZsRE's: skip without the copy
    args = ["--quick", "--json", "--model", str(tiny_model_dir), "--steps", "2"]
    args += ["--naive-trials", "1", "--resident-trials", "2", "--pack-sizes", "2,3"]
    result = CliRunner().invoke(bench_app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["model"] == str(tiny_model_dir)
    assert summary["trials"] == {"naive": 1, "resident": 2, "packed:2": 2, "packed:3": 3}
    assert set(summary["packed"]) == set(summary["packed_matmul_share"]) == {"2", "3"}
    rates = [summary["naive_trials_per_hour"], summary["resident_trials_per_hour"], *summary["packed"].values()]
    shares = [summary["naive_matmul_share"], summary["resident_matmul_share"], *summary["packed_matmul_share"].values()]
    assert all(v > 0 for v in rates + shares + [summary["matmul_gflops"], summary["mean_trial_gflop"]])
    assert summary["best_pack_size"] in (2, 3)
    for k, parts in summary["packed_parts_s"].items():
        assert set(parts) == {"load", "base", "train", "evaluate"} and all(v > 0 for v in parts.values())
        assert sum(parts.values()) <= summary["wall_s"][f"packed:{k}"]
        assert 0 < summary["packed_train_flop_share"][k] < 1 and summary["packed_train_matmul_share"][k] > 0
    best = summary["packed"][str(summary["best_pack_size"])]
    assert best == max(summary["packed"].values())
    assert abs(summary["best_speedup"] - best / summary["naive_trials_per_hour"]) < 1e-9 * best
    # packed and unpacked runs of the same trials answer the same
    assert summary["same_y_new_as_unpacked"] == 1.0

    console = Console(record=True, width=160)
    console.print(render_table(summary))
    text = console.export_text()
    for name in summary["trials"]:
        assert variant_label(name) in text
    assert f"{summary['packed']['3'] / summary['naive_trials_per_hour']:.2f}" in text
