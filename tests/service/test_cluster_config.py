"""cluster.yaml passes Ray's own cluster-config validation and says what the deployment needs."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _command(commands: list[str], program: str) -> list[str]:
    """The argv, from ``program`` on, of the one command line that runs it."""
    words = program.split()
    found = []
    for line in commands:
        argv = shlex.split(line)
        found += [argv[i:] for i in range(len(argv)) if argv[i : i + len(words)] == words]
    assert len(found) == 1, f"expected one `{program}` command, found {len(found)}"
    return found[0]


def _option(argv: list[str], name: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not given in {' '.join(argv)}")


def test_raw_file_matches_the_schema_and_ray_accepts_the_prepared_config(config, schema):
    jsonschema.validate(config, schema)
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_pools(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "no trial may be scheduled on the head"

    gpu = nodes["gpu_lora"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"

    a100 = nodes["a100_fullft"]
    assert a100["min_workers"] == 0
    assert a100["resources"]["A100"] == 8 and a100["resources"]["GPU"] == 8
    assert a100["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert "A100" not in gpu["resources"]

    assert config["idle_timeout_minutes"] > 0
    assert sum(n.get("max_workers", 0) for n in nodes.values()) <= config["max_workers"]


def test_services_bind_to_loopback(config):
    start = config["head_start_ray_commands"]
    mlflow = _command(start, "mlflow server")
    assert _option(mlflow, "--host") == "127.0.0.1"
    assert _option(mlflow, "--port") == "5000"
    assert _option(mlflow, "--backend-store-uri").startswith(("sqlite:///", "postgresql://"))
    assert _option(mlflow, "--artifacts-destination").startswith("s3://")
    ray_head = _command(start, "ray start")
    assert _option(ray_head, "--dashboard-host") == "127.0.0.1"
    assert "--head" in ray_head


def test_working_copy_is_mounted_and_installed(config):
    remote, local = next(iter(config["file_mounts"].items()))
    assert (REPO_ROOT / local / "pyproject.toml").is_file()
    assert any(f"pip install -e {remote}" in c.replace("~", "/home/ubuntu") for c in config["setup_commands"])


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(idle_timeout_minute=5),
        lambda c: c["available_node_types"]["gpu_lora"].update(min_worker=0),
        lambda c: c["available_node_types"]["a100_fullft"]["resources"].update(A100="eight"),
    ],
    ids=["unknown top-level key", "unknown node-type key", "non-integer resource"],
)
def test_broken_copy_fails_validation(config, break_it):
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_specs_store_on_the_shared_mount_every_node_sets_up(config):
    """Ray Tune / Train on several nodes need storage every node reaches: each node mounts one NFS (EFS) file
    system, owned by the ssh user, and every cluster spec keeps its storage there (the quick overrides stay local)."""
    mounts = [shlex.split(c) for c in config["setup_commands"] if " mount -t " in c]
    assert len(mounts) == 1, "setup_commands (run on every node) mount the shared file system once"
    argv = mounts[0]
    mountpoint = argv[-1]
    assert argv[argv.index("-t") + 1] in ("nfs4", "nfs", "efs")
    assert any("chown" in c and mountpoint in c for c in config["setup_commands"]), "the ssh user can write there"
    for spec_file in sorted((REPO_ROOT / "jobs").glob("*.yaml")):
        raw = yaml.safe_load(spec_file.read_text())
        if not raw.get("resources", {}).get("expect_autoscaling"):
            continue  # a local job (the README's main job), not a cluster spec
        assert Path(raw["storage_path"]).is_relative_to(mountpoint), (
            f"{spec_file.name}: {raw['storage_path']} is off {mountpoint}"
        )
        quick = raw.get("quick", {}).get("storage_path")
        assert quick is None or not Path(quick).is_absolute(), f"{spec_file.name}: the quick run stores locally"
