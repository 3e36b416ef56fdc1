"""A study on a simulated multi-node Ray cluster (several raylets on this machine, ``ray.cluster_utils``):
placement by custom resources, and a pool node lost mid-study.

The head offers no CPUs (as in cluster.yaml); a "pool" node stands in for the GPU pool and an "A100"
node for the full fine-tuning pool (CPUs stand in for GPUs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysem.ports import free_port
from raysem.service.interrupt import BARRIER
from raysem.service.planning import count_trials
from raysem.service.spec import load_spec
from raysem.service.study import run_study

from conftest import REPO_ROOT, tiny_spec, trial_runs

pytestmark = pytest.mark.slow

NODE_ARGS = {"pool": {"num_cpus": 1, "resources": {"pool": 1}}, "a100": {"num_cpus": 2, "resources": {"A100": 2}}}


@pytest.fixture(scope="module")
def simulated():
    """One simulated cluster for the module: a head without CPUs, a pool node and an A100 node. ``nodes``
    names the current pool and A100 nodes; a test that loses one replaces it through ``replace_node``."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    sim = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port()}
    )
    nodes = {"pool": sim.add_node(**NODE_ARGS["pool"]), "a100": sim.add_node(**NODE_ARGS["a100"])}
    ray.init(address=sim.address)
    yield sim, nodes
    ray.shutdown()
    sim.shutdown()


@pytest.fixture()
def cluster(simulated):
    """The module's cluster, once every node it has is up."""
    sim, nodes = simulated
    sim.wait_for_nodes()
    return sim, nodes


def replace_node(sim, nodes: dict, name: str):
    """The node goes without a graceful shutdown (a preempted spot node) and a fresh one of its kind joins."""
    sim.remove_node(nodes[name], allow_graceful=False)
    nodes[name] = sim.add_node(**NODE_ARGS[name])
    return nodes[name]


def cluster_spec(tmp_path: Path, model_dir: Path, name: str, **extra) -> Path:
    """``tiny_spec`` with trials asking for the pool, DeepSpeed workers for the A100 node, and no sweep."""
    cluster = {
        "sampling": {"k": 2, "n_samplings": 2, "seed": 0},
        "trial": {"method": "lora", "steps": 2, "lr": 1e-3, "num_workers": 2, "batch_size": 2},
        "sweep": {},
        "resources": {"cpu": 1, "custom": {"pool": 1}, "full_ft_worker": {"A100": 1, "CPU": 1}},
        "report": False,
    }
    return tiny_spec(tmp_path, model_dir, name, **{**cluster, **extra})


def exactly_once(uri: str, experiment: str, expected: int) -> None:
    _, runs = trial_runs(uri, experiment)
    keys = [r.data.tags["raysem.trial_key"] for r in runs]
    statuses = {r.info.status for r in runs}
    assert (len(keys), len(set(keys)), statuses) == (expected, expected, {"FINISHED"}), (
        len(keys),
        len(set(keys)),
        statuses,
    )


def test_a_lost_pool_node_loses_and_duplicates_no_trial(tmp_path, tiny_model_dir, cluster):
    """The pool node disappears mid-study (a preempted spot node: no graceful shutdown), a fresh one joins,
    and the study finishes with every trial exactly once."""
    sim, nodes = cluster
    path = cluster_spec(
        tmp_path,
        tiny_model_dir,
        "preempted",
        sampling={"k": 2, "n_samplings": 4, "seed": 1},
        failure={"max_failures": 3},
    )
    spec = load_spec(path)
    barrier = tmp_path / "barrier"  # two units finish, the third waits (running on the pool node) for the release
    barrier.mkdir()
    (barrier / "pass").write_text("2")
    env = {**os.environ, "RAY_ADDRESS": sim.address, BARRIER: str(barrier)}
    command = [sys.executable, str(REPO_ROOT / "jobs" / "reweight.py"), "--spec", str(path)]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (barrier / "unit-2").exists() and job.poll() is None:
        time.sleep(0.2)
    assert job.poll() is None and (barrier / "unit-2").exists(), "the third unit waits at the barrier"
    assert len(trial_runs(spec.tracking.uri, spec.experiment)[1]) == 2, "two units' trials are logged before the loss"
    replace_node(sim, nodes, "pool")
    (barrier / "release").touch()
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    counts = [int(m) for m in re.findall(r"\[raysem\] trials (\d+)/", stderr)]
    assert max(counts) == count_trials(spec), f"progress counts a retried unit once: {counts}"
    exactly_once(spec.tracking.uri, spec.experiment, count_trials(spec))
    errors = [p.read_text() for p in (tmp_path / "ray" / spec.name).rglob("error.txt")]
    assert errors and all(re.search(r"The actor \w+ (is unavailable|died)", e) for e in errors), (
        "a running unit was lost with its node, and retried"
    )


def test_node_local_storage_is_refused_before_any_trial_when_nodes_may_join(tmp_path, tiny_model_dir, cluster):
    from raysem.service.storage import StorageError, mount_of

    sim, _ = cluster
    if mount_of(tmp_path).shared:
        pytest.skip(f"{tmp_path} is on a network filesystem here")
    grows = {"cpu": 1, "custom": {"pool": 1}, "expect_autoscaling": True}
    spec = load_spec(cluster_spec(tmp_path, tiny_model_dir, "grows", resources=grows))
    with pytest.raises(StorageError, match=r"node-local filesystem.*expect_autoscaling lets nodes join.*/mnt/raysem"):
        run_study(spec, address=sim.address)
    assert trial_runs(spec.tracking.uri, spec.experiment)[1] == []
    shared = load_spec(cluster_spec(tmp_path, tiny_model_dir, "grows-shared", resources=grows, storage_shared=True))
    run_study(shared, address=sim.address)
    exactly_once(shared.tracking.uri, shared.experiment, count_trials(shared))


def test_trials_land_on_their_pools_and_a_lost_a100_node_fails_the_full_finetune_trial_which_retries_once(
    tmp_path, tiny_model_dir, cluster
):
    """LoRA and full fine-tuning trials: Tune trials run on the pool node, DeepSpeed workers on A100 nodes, the
    logger on the head. The A100 node goes during a DeepSpeed trial: Ray Train restarts the worker group once a
    fresh A100 node is up, as failure.max_failures allows (and says so), and every trial is logged exactly once."""
    from ray.util.state import list_actors

    sim, nodes = cluster
    path = cluster_spec(
        tmp_path,
        tiny_model_dir,
        "a100-lost",
        sampling={"k": 2, "n_samplings": 1, "seed": 2},
        sweep={"method": {"grid": ["lora", "full"]}},
        trial={"method": "lora", "steps": 4, "lr": 1e-4, "num_workers": 2, "batch_size": 2},
        failure={"max_failures": 1},
    )
    spec = load_spec(path)
    earlier = {a.actor_id for a in list_actors(address=sim.address, limit=10000)}  # the module's other tests' actors
    env = {**os.environ, "RAY_ADDRESS": sim.address}
    command = [sys.executable, str(REPO_ROOT / "jobs" / "full_finetune.py"), "--spec", str(path)]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)

    def training() -> bool:
        actors = list_actors(address=sim.address, filters=[("state", "=", "ALIVE")], limit=1000)
        return any(a.class_name.startswith("RayTrainWorker") for a in actors)

    deadline = time.time() + 300
    while time.time() < deadline and not training() and job.poll() is None:
        time.sleep(0.2)
    assert job.poll() is None and training(), "the node must go while DeepSpeed trains"
    lost = nodes["a100"].node_id
    fresh = replace_node(sim, nodes, "a100").node_id
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    exactly_once(spec.tracking.uri, spec.experiment, count_trials(spec))
    # DeepSpeed workers were alive when their node went, so the run finished only by restarting them; the
    # controller's retry notice reaches the driver's log when Ray forwards it in time.
    for notice in re.findall(
        r"\[FailurePolicy\] RETRY\n(?:.*\n){0,3}?.*Error count: \d+ \(max allowed: [^)]*\)", stderr
    ):
        assert "max allowed: 1)" in notice, notice

    where: dict[str, set[str]] = {}
    for actor in list_actors(address=sim.address, detail=True, limit=10000):
        if (
            actor.actor_id in earlier or actor.node_id is None
        ):  # None: created, never placed (a group torn down with its node)
            continue
        # Ray names a Tune function trainable "ImplicitFunc" or "wrap_function.<locals>.ImplicitFunc"
        where.setdefault(actor.class_name.rsplit(".", 1)[-1], set()).add(actor.node_id)
    assert where["TrialLogger"] == {sim.head_node.node_id}, "the logger (and its pending store) stay on the head"
    assert where["ImplicitFunc"] == {nodes["pool"].node_id}, "every Tune trial on the pool node"
    train_workers = {node for name, ids in where.items() if name.startswith("RayTrainWorker") for node in ids}
    assert train_workers == {lost, fresh}, (
        f"DeepSpeed workers only on the A100 nodes (the lost one, then the fresh one), got {where}"
    )


def test_a_unit_that_reserved_a_gpu_cuda_cannot_see_stops_with_a_clear_error(
    tmp_path, tiny_model_dir, cluster, monkeypatch
):
    """A node offers a (simulated) GPU, which Ray assigns to the unit, but torch sees no CUDA: the base-answer
    job on the unit's bundle stops, and with the table cached the unit stops before any trial; each names the
    GPU and the way out, instead of running on the node's CPU."""
    import torch

    from raysem.models.loader import load_model
    from raysem.semantics.tables import distance_table
    from raysem.service.interrupt import StudyInterrupted
    from raysem.service.planning import study_facts
    from raysem.service.study import ResourceError

    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))  # an empty table cache

    sim, _ = cluster
    gpu_node = sim.add_node(num_cpus=1, num_gpus=1, resources={"gpupool": 1})
    try:
        sim.wait_for_nodes()
        resources = {"cpu": 1, "gpu": 1, "custom": {"gpupool": 1}}
        spec = load_spec(
            cluster_spec(
                tmp_path,
                tiny_model_dir,
                "no-cuda",
                resources=resources,
                sampling={"k": 2, "n_samplings": 1},
                failure={"max_failures": 0},
            )
        )
        with pytest.raises(ResourceError, match=r"the base-answer job on .*'GPU': 1\.0.* failed: .*reserved GPU \[0\]"):
            run_study(spec, address=sim.address)
        # the table the units would read (bfloat16: the precision a unit with a GPU computes in), made here
        distance_table(
            load_model(str(tiny_model_dir), dtype=torch.bfloat16, prompting=spec.prompting), study_facts(spec)[0]
        )
        with pytest.raises(StudyInterrupted, match=r"1 errored past failure\.max_failures.*reserved GPU"):
            run_study(spec, address=sim.address)
        errors = [p.read_text() for p in (tmp_path / "ray" / spec.name).rglob("error.txt")]
        assert errors and all("reserved GPU [0]" in e and "resources.gpu: 0" in e for e in errors), errors
        assert trial_runs(spec.tracking.uri, spec.experiment)[1] == [], "no trial ran on the CPU instead"
    finally:
        sim.remove_node(gpu_node)


def test_a_missing_table_is_computed_on_the_pool_and_the_driver_never_loads_the_model(
    tmp_path, tiny_model_dir, cluster, monkeypatch
):
    """No cached table: the base answers are a Ray Data job whose actors hold the trial's resources (so they
    land on the pool node, the head offering none), and the driver loads no model at any point of the study."""
    from ray.util.state import list_actors

    import raysem.models.loader
    import raysem.semantics.tables
    from raysem.semantics.tables import load_distance_table

    def refuse(*args, **kwargs):
        raise AssertionError(f"the driver loaded a model: load_model{args}")

    for module in (raysem.models.loader, raysem.semantics.tables):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))  # an empty table cache
    sim, nodes = cluster
    earlier = {a.actor_id for a in list_actors(address=sim.address, limit=10000)}  # other tests' on this cluster
    spec = load_spec(cluster_spec(tmp_path, tiny_model_dir, "table-on-pool", sampling={"k": 2, "n_samplings": 2}))
    run_study(spec, address=sim.address)
    exactly_once(spec.tracking.uri, spec.experiment, count_trials(spec))
    [table] = (tmp_path / "home" / "distances").glob("*.parquet")
    made = load_distance_table(table).attrs["raysem"]
    # the dataset (data_limit 80) is small: tabled whole, once, for every later study on it
    assert made["computed_by"].startswith("ray-data (1 actors of {'CPU': 1.0, 'pool': 1.0}") and made["facts"] == 80
    assert made["dtype"] == "float32"
    actors = [
        a
        for a in list_actors(address=sim.address, detail=True, limit=10000)
        if "BaseRecords" in a.class_name and a.actor_id not in earlier
    ]
    assert actors and {a.node_id for a in actors} == {nodes["pool"].node_id}, actors
