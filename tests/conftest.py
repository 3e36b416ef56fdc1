"""Shared fixtures: a tiny random Llama for fast unit tests and the real embedded model for integration tests."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Ray gives a starting dashboard 60 s before `ray start` / `ray.init` fail; on a loaded 2-core machine it has
# taken longer. Set here, it reaches every Ray the suite starts, the job test's `ray start` included.
os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (
    Path(os.environ["RAYSEM_DATA"]).expanduser()
    if os.environ.get("RAYSEM_DATA")
    else REPO_ROOT.parent / "shared" / "data"
)
"""The real dataset copies: ``$RAYSEM_DATA`` when set, else ``../shared/data`` beside the clone (as the package looks)."""


def shared_file(relative: str) -> Path:
    """A file of the real dataset copies under ``SHARED_DATA``; the calling test skips, saying why, when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real dataset copy {relative} not found under {SHARED_DATA} (set RAYSEM_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down, at the end of the session, the local Ray that ``ray_runtime`` started."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture()
def ray_runtime(_ray_session, monkeypatch):
    """One local Ray (4 CPUs, its own dashboard) shared by every test that runs in-process on Ray; started
    on first use, and again if a test (the simulated cluster's) shut it down. Ray Train's placement-group
    cleaner asks the state API whether a run's controller is alive; without an explicit API address it
    picks the machine's latest `ray start` cluster, which may be another's: RAY_API_SERVER_ADDRESS pins it,
    for the Ray processes (set when they start) and for the test that uses it (unset after the test)."""
    monkeypatch.setenv(API_SERVER, ensure_ray())
    yield


@pytest.fixture()
def without_ray() -> None:
    """No Ray runtime in this test process: a test that starts its own (a job's ``main``) would otherwise
    meet ``ray_runtime``'s, left running by an earlier test on the same worker, and ``ray.init`` would
    refuse. ``ensure_ray`` starts the shared one again on its next use."""
    import ray

    ray.shutdown()


API_SERVER = "RAY_API_SERVER_ADDRESS"
_RUNTIME: dict[str, str] = {}


def ensure_ray() -> str:
    """``ray_runtime``'s local Ray, for fixtures of a wider scope (call it with ``_ray_session`` requested);
    returns its dashboard (state API) address."""
    import ray

    from raysem.ports import free_port

    if not ray.is_initialized():
        address = f"http://127.0.0.1:{free_port()}"
        previous = os.environ.get(API_SERVER)
        os.environ[API_SERVER] = address  # inherited by the Ray processes started now
        try:
            ray.init(
                address="local",  # a new one, never another test's `ray start` cluster on this machine
                num_cpus=4,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=int(address.rsplit(":", 1)[1]),
            )
        finally:
            if previous is None:
                del os.environ[API_SERVER]
            else:
                os.environ[API_SERVER] = previous
        _RUNTIME["address"] = address
    return _RUNTIME["address"]


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (pulled on first use)."""
    from raysem.models.loader import load_model

    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol) -> Path:
    """A randomly initialised 2-layer Llama with the embedded model's tokenizer, saved as a local model folder."""
    from raysem.models.tiny import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smol.tokenizer)


@pytest.fixture()
def tiny(tiny_model_dir):
    """A fresh copy of the tiny random Llama, loaded through raysem's own loader."""
    from raysem.models.loader import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture()
def tiny64(tiny_model_dir):
    """The tiny random Llama in float64, for comparisons that must not depend on a CPU's float32 rounding."""
    from raysem.models.loader import load_model

    return load_model(str(tiny_model_dir), dtype=torch.float64)


@functools.cache
def _empty_store() -> Path:
    """A SQLite MLflow database with its tables made, once per test process (MLflow's migrations cost about a
    second of CPU per new database)."""
    from mlflow import MlflowClient

    db = Path(tempfile.mkdtemp(prefix="raysem-empty-store-")) / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def new_store(folder: Path) -> str:
    """The URI of a new, empty SQLite MLflow store ``folder/mlflow.db`` (kept if the test made it already)."""
    db = folder / "mlflow.db"
    if not db.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), db)
    return f"sqlite:///{db}"


def tiny_spec(tmp_path: Path, model_dir: Path, name: str, **extra) -> Path:
    """A study spec file on the tiny random Llama (local Ray, SQLite MLflow under ``tmp_path``); ``extra`` replaces fields."""
    data = {
        "name": name,
        "model": str(model_dir),
        "dataset": "worldfacts",
        "data_limit": 80,
        "sampling": {"k": 1, "n_samplings": 4, "per_k": {3: 2}, "seed": 0},
        "trial": {"method": "lora", "steps": 2, "lr": 1e-3},
        "sweep": {"k": {"grid": [1, 3]}, "gamma": {"grid": [0.0, 1.0]}},
        "pack_size": 4,
        "resources": {"cpu": 1},
        "tracking": {"uri": new_store(tmp_path)},
        "storage_path": str(tmp_path / "ray"),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trial_runs(uri: str, experiment: str):
    """(client, the experiment's trial runs) read back through MlflowClient."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs(
        [exp.experiment_id], filter_string="tags.`raysem.role` = 'trial'", max_results=1000
    )


def start_mlflow_server(folder: Path, port: int):
    """A real ``mlflow server`` on 127.0.0.1:``port`` (one worker) with a SQLite backend and a local artifact store."""
    from raysem.service.mlflow_server import start_server

    folder.mkdir(parents=True, exist_ok=True)
    return start_server(folder, workers=1, port=port)[0]


LONGEST_FIRST = (
    "service/test_study_resume.py",
    "service/test_multinode.py",
    "training/test_full_finetune.py",
    "service/test_chaos.py",
    "training/test_packed.py",
    "training/test_trial.py",
    "service/test_study.py",
    "service/test_job_submit.py",
    "models/test_generate.py",
    "service/test_tracking.py",
)
"""Test files by how long they take, longest first (measured on 2 cores)."""


def pytest_collection_modifyitems(items: list) -> None:
    """The longest test files first (each file keeps its own order), so that the two workers of ``make test``
    (``pytest -n 2 --dist loadfile``) finish together instead of one running a long file alone at the end."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").as_posix(), len(rank)))
