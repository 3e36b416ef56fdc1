"""Where a study keeps Ray's experiment state and its pending results, and whether every node can reach it.

Ray 2.x no longer syncs trial or Ray Train files from worker nodes to the head: on a multi-node
cluster Tune and Train need storage that every node reaches (cloud storage or a shared filesystem
such as NFS / EFS; Ray Train: "optional for single-node clusters, but required for multi-node
clusters"). raysem's storage path also holds the pending store and the parent-run id that
``--resume`` reads, so it must be a filesystem path, writable by the cluster's user, and shared
when the study spans more than one machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from raysem.errors import SpecError

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "efs",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "glusterfs",
        "ceph",
        "cephfs",
        "beegfs",
        "gpfs",
        "9p",
        "virtiofs",
        "fuse.s3fs",
        "fuse.mountpoint-s3",
        "fuse.gcsfuse",
        "fuse.juicefs",
        "fuse.sshfs",
        "fuse.cephfs",
    }
)
"""Filesystem types (as /proc/mounts names them) that every node of a cluster can mount."""


class StorageError(SpecError):
    """The study's storage path cannot serve the cluster it runs on."""


@dataclass(frozen=True)
class Mount:
    """The filesystem a path lives on."""

    mountpoint: str
    fstype: str

    @property
    def shared(self) -> bool:
        return self.fstype in NETWORK_FILESYSTEMS


def mount_of(path: Path) -> Mount:
    """The mount holding ``path`` (the longest mountpoint that contains it)."""
    path = path.resolve()
    best = Mount("/", "unknown")
    for part in psutil.disk_partitions(all=True):
        mp = Path(part.mountpoint)
        if (path == mp or mp in path.parents) and len(part.mountpoint) >= len(best.mountpoint):
            best = Mount(part.mountpoint, part.fstype)
    return best


def check_storage(location: str | Path, *, hosts: int, autoscaling: bool, declared_shared: bool | None = None) -> Mount:
    """Refuse a storage location the study cannot use: a URI, not creatable or writable here, or node-local
    while the cluster spans (or an autoscaler will add) more than one machine. Returns the mount it lives on."""
    if "://" in str(location):
        raise StorageError(
            f"storage_path {str(location)!r}: raysem keeps its pending results and the study's parent-run id under "
            "the storage path, so it must be a filesystem path; mount the bucket (e.g. EFS, or s3 through "
            "mountpoint-s3) on every node and give that path"
        )
    path = Path(location).resolve()
    user = os.environ.get("USER") or str(os.getuid())
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".raysem-write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StorageError(
            f"storage_path {str(path)!r} is not writable by user {user!r} on this node ({exc.strerror}); "
            "use a folder that user owns, e.g. under its home or the cluster's shared mount"
        ) from None
    mount = mount_of(path)
    shared = mount.shared if declared_shared is None else declared_shared
    if not shared and (hosts > 1 or autoscaling):
        why = f"the Ray cluster spans {hosts} machines" if hosts > 1 else "resources.expect_autoscaling lets nodes join"
        raise StorageError(
            f"storage_path {str(path)!r} is on a node-local filesystem ({mount.fstype} at {mount.mountpoint}) but "
            f"{why}: Ray Tune and Train need storage every node reaches. Use the cluster's shared mount "
            "(cluster.yaml mounts EFS at /mnt/raysem: --storage /mnt/raysem/ray), or set storage_shared: true "
            "if this path is shared in a way raysem does not recognise"
        )
    return mount


def cluster_hosts() -> int:
    """How many distinct machines the connected Ray cluster's live nodes run on."""
    import ray

    return len({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
