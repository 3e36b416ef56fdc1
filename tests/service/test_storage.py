"""The storage check: a node-local path is refused once a study spans (or may grow to) several machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysem.service.storage import NETWORK_FILESYSTEMS, StorageError, check_storage, mount_of


@pytest.fixture()
def local_dir(tmp_path: Path) -> Path:
    if mount_of(tmp_path).shared:
        pytest.skip(f"{tmp_path} is on a network filesystem here ({mount_of(tmp_path).fstype})")
    return tmp_path / "ray"


def test_mount_of_finds_the_filesystem_of_a_path(tmp_path):
    import psutil

    mount = mount_of(tmp_path)
    mountpoints = {p.mountpoint: p.fstype for p in psutil.disk_partitions(all=True)}
    assert mountpoints[mount.mountpoint] == mount.fstype
    assert tmp_path.resolve().is_relative_to(mount.mountpoint)
    assert mount_of(Path("/proc/self")).fstype == "proc", "the longest mountpoint wins over /"


def test_node_local_storage_is_fine_on_one_machine(local_dir):
    mount = check_storage(local_dir, hosts=1, autoscaling=False)
    assert local_dir.is_dir() and not mount.shared
    assert list(local_dir.iterdir()) == [], "the write probe is cleaned up"


@pytest.mark.parametrize(
    ("hosts", "autoscaling", "why"), [(3, False, "spans 3 machines"), (1, True, "expect_autoscaling")]
)
def test_node_local_storage_is_refused_on_a_cluster(local_dir, hosts, autoscaling, why):
    fstype = mount_of(local_dir).fstype
    with pytest.raises(StorageError, match=rf"{local_dir}.*node-local filesystem \({fstype} at .*{why}.*/mnt/raysem"):
        check_storage(local_dir, hosts=hosts, autoscaling=autoscaling)


def test_declared_shared_storage_is_accepted(local_dir):
    assert check_storage(local_dir, hosts=4, autoscaling=True, declared_shared=True).fstype not in NETWORK_FILESYSTEMS


def test_unwritable_and_uri_storage_are_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=r"a-file/ray'? is not writable by user"):
        check_storage(blocker / "ray", hosts=1, autoscaling=False)
    with pytest.raises(StorageError, match=r"s3://bucket/ray.*must be a filesystem path"):
        check_storage("s3://bucket/ray", hosts=1, autoscaling=False)
