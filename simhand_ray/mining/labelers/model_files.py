"""Model files from a path, an s3:// URI or an http(s):// URL (the OpenMMLab model zoo publishes its checkpoints
as https URLs), as a local file: remote ones are downloaded once per node into a cache folder keyed by a hash of
the URI, written atomically (a temp file in the same folder, then a rename), so labeler actors that start
together on one node download a file once and never read a half-written one.

The cache folder: ``$SIMHAND_MODEL_CACHE``, else ``~/.cache/simhand-ray/models``. A cached file is trusted to
be what its URI named when it was fetched; delete the folder to fetch again. Reading the file (safely) is
``safe_load.load_torch_file``'s job, not this module's.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request

from simhand_ray import storage

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 60.0
CHUNK = 1 << 20


class ModelFileMissing(FileNotFoundError):
    """The URI names nothing that can be fetched (no such file or object, an HTTP error, a refused connection)."""


def is_url(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def cache_dir() -> str:
    return os.environ.get("SIMHAND_MODEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "simhand-ray",
                                                                  "models")


def cache_path(uri: str, folder: str | None = None) -> str:
    """Where ``uri`` is cached: ``<folder>/<sha256(uri)[:24]>-<its file name>``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "file"
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-80:]
    return os.path.join(folder or cache_dir(), f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}-{name}")


def _download(uri: str, out) -> int:
    """Stream ``uri`` into the open binary file ``out``; the bytes written."""
    if storage.is_s3(uri):
        if not storage.exists(uri):
            raise ModelFileMissing(f"no such object: {uri}")
        data = storage.read_bytes(uri)
        out.write(data)
        return len(data)
    try:
        with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S) as resp:
            expected = resp.headers.get("Content-Length")
            n = 0
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                n += len(chunk)
    except urllib.error.HTTPError as e:
        raise ModelFileMissing(f"{uri}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ModelFileMissing(f"{uri}: {getattr(e, 'reason', e)}") from None
    if expected is not None and int(expected) != n:
        raise ModelFileMissing(f"{uri}: the download ended after {n} of {expected} bytes")
    return n


def local_copy(uri: str, folder: str | None = None) -> str:
    """A local path holding the file ``uri`` names: a local path (or file://) as it is; an s3:// or http(s)://
    file fetched into the node's cache unless already there. ``ModelFileMissing`` if there is nothing to fetch."""
    if not (is_url(uri) or storage.is_s3(uri)):
        path = storage.resolve(uri)[1]
        if not os.path.exists(path):
            raise ModelFileMissing(f"no such file: {uri}")
        return path
    path = cache_path(uri, folder)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:        # one download per node; the others wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            return path
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                n = _download(uri, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    log.info("fetched %s (%d bytes) into %s", uri, n, path)
    return path
