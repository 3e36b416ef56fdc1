"""Downloading the canonical ROME-project dataset files, checked against their published sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from raysem.paths import cache_dir

ROME_BASE_URL = "https://rome.baulab.info/data/dsets/"
MEMIT_BASE_URL = "https://memit.baulab.info/data/dsets/"
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A dataset could not be downloaded or did not match its checksum."""


@dataclass(frozen=True)
class DatasetSource:
    """A file to fetch: its name under each base URL, its sha256 and size, and the base URLs to try in order."""

    name: str
    filename: str
    sha256: str
    size: int | None = None
    base_urls: tuple[str, ...] = (ROME_BASE_URL, MEMIT_BASE_URL)


SOURCES: dict[str, DatasetSource] = {
    "zsre": DatasetSource(
        name="zsre",
        filename="zsre_mend_eval.json",
        sha256="8a371d512f8a6ab175db4ef672181d5c0e52da23298cb51e5a2eeea2f89aa9cd",
        size=8_091_864,
    ),
    "counterfact": DatasetSource(
        name="counterfact",
        filename="counterfact.json",
        sha256="d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f",
        size=45_108_470,
    ),
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dataset(
    name: str | DatasetSource,
    *,
    dest: Path | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download a dataset file into ``dest`` (default: ``<raysem cache>/data/<name>/``) and return its path.

    A file already there with the right sha256 is kept as is. Otherwise the file is downloaded to a
    temporary file beside the target, checked, and renamed into place; ``base_url`` replaces the
    source's list of mirrors.
    """
    source = name if isinstance(name, DatasetSource) else _source(name)
    folder = Path(dest) if dest is not None else cache_dir("data") / source.name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.filename
    if target.is_file() and file_sha256(target) == source.sha256:
        return target
    bases = (base_url,) if base_url else source.base_urls
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + source.filename
        try:
            _download(url, target, source, timeout)
            return target
        except FetchError as exc:
            failures.append(str(exc))
    raise FetchError(f"could not fetch {source.name}: " + " | ".join(failures))


def _source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise FetchError(f"unknown dataset {name!r}; can fetch: {', '.join(SOURCES)}")
    return SOURCES[name]


def _download(url: str, target: Path, source: DatasetSource, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``target``, verify it, then rename it atomically."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise FetchError(f"{url}: cannot download ({reason})") from None
        if digest.hexdigest() != source.sha256:
            expected_size = f", expected {source.size:,}" if source.size is not None else ""
            raise FetchError(
                f"{url}: sha256 mismatch: expected {source.sha256}, got {digest.hexdigest()} "
                f"({size:,} bytes downloaded{expected_size}); nothing was kept"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
