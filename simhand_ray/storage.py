"""URIs (plain path, file://, s3://) -> pyarrow filesystems; listing; atomic writes; stage manifests.

Every output file is written whole or not at all: locally to a temporary name then ``os.replace``; on S3
as one PUT of the complete bytes (an object appears only when its upload completes). That is what lets
a killed job be re-run over the same output.

S3 settings come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, or an instance profile), plus an endpoint override
for S3-compatible stores: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

#: The S3 settings that say where the store is, not who you are: jobs forward these to Ray workers.
#: Credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and AWS_PROFILE never travel
#: through Ray: a runtime_env is written to Ray's logs and served by the dashboard's jobs API. Workers take
#: them from their node (instance profile, IRSA / Pod Identity, the node's environment; a local Ray's
#: workers inherit the driver's environment): README, "Credentials".
AWS_ENV_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class StorageError(RuntimeError):
    """A URI that cannot be used: missing bucket, bad credentials, unreachable endpoint."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def aws_env() -> dict[str, str]:
    """The non-secret S3 settings of this process (region, endpoint), to forward to Ray workers via
    ``runtime_env``; never credentials (see ``AWS_ENV_VARS``)."""
    return {k: os.environ[k] for k in AWS_ENV_VARS if os.environ.get(k)}


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem that holds no credential: the AWS SDK finds them where the filesystem is used (the
    environment, ``~/.aws``, the instance profile), so one pickled into a Ray task or ``RunConfig`` carries
    only the region and the endpoint (README, "Credentials")."""
    kwargs: dict = {"region": region or "us-east-1", "connect_timeout": 10, "request_timeout": 60}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "http"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (filesystem, path inside it). Plain paths are made absolute."""
    uri = str(uri)
    if is_s3(uri):
        fs = _s3_filesystem(s3_endpoint(), os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
        return fs, uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute(uri: str) -> str:
    """A URI that means the same in any working directory: plain and file:// paths made absolute, s3://
    unchanged, "" kept. For configs handed to Ray Train workers, which run in a directory of their own."""
    uri = str(uri)
    if not uri or is_s3(uri):
        return uri
    if uri.startswith("file://"):
        return "file://" + os.path.abspath(os.path.expanduser(uri[len("file://"):]))
    return resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (works for s3:// and local paths)."""
    out = str(uri).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _listed(name: str, suffixes: tuple[str, ...] | None) -> bool:
    """Whether a file name is listed: not hidden or temporary, and with one of the suffixes (any case)."""
    if name.startswith(".") or name.startswith("_tmp"):
        return False
    return not suffixes or name.lower().endswith(tuple(s.lower() for s in suffixes))


def _walk_local(root: str, recursive: bool) -> list[str]:
    """Regular files under a local directory, following symlinks but never into a directory already seen
    (so link loops end), each real file once: under its real path if that is in the tree, else under the
    first of its paths in sorted order."""
    seen_dirs: set[tuple[int, int]] = set()
    by_real: dict[str, str] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:          # vanished, unreadable, or a link that loops or dangles
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        subdirs = []
        for e in entries:
            try:
                if e.is_dir():
                    subdirs.append(e.path)
                elif e.is_file():
                    real = os.path.realpath(e.path)
                    if real not in by_real or (e.path != real, e.path) < (by_real[real] != real, by_real[real]):
                        by_real[real] = e.path
            except OSError:      # a self-link: neither a file nor a directory
                continue
        if recursive:
            stack.extend(reversed(subdirs))
    return list(by_real.values())


def list_files(uri: str, suffixes: tuple[str, ...] | None = None, recursive: bool = True) -> list[str]:
    """Files under a directory or prefix, as URIs of the same scheme, sorted; filtered by suffix (any case).

    Locally symlinks are followed, but no link loop, and each real file is listed once."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        files = _walk_local(path, recursive) if os.path.isdir(path) else []
        return sorted(f for f in files if _listed(os.path.basename(f), suffixes))
    info = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    return sorted("s3://" + f.path for f in info
                  if f.type == pafs.FileType.File and _listed(f.base_name, suffixes))


def list_parts(uri: str, suffixes: tuple[str, ...] = (".parquet",)) -> list[str]:
    """The data files of a dataset folder, sorted: as ``list_files``, but skipping every name (file or folder)
    that starts with ``_`` or ``.``, as pandas, pyarrow.dataset, Ray Data and DuckDB do (``_manifest.json``,
    side tables)."""
    root = str(uri).rstrip("/")
    return [f for f in list_files(uri, suffixes)
            if not any(part.startswith(("_", ".")) for part in f[len(root):].strip("/").split("/"))]


def identity(uri: str) -> str:
    """What makes two URIs the same file: the resolved real path locally (symlinks, ``..``, relative
    paths), the URI itself on S3."""
    if is_s3(uri):
        return str(uri).rstrip("/")
    return os.path.realpath(resolve(uri)[1])


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


@contextmanager
def naming_parquet(uri: str):
    """``with naming_parquet(uri):`` turns pyarrow's errors reading ``uri`` (a corrupt footer or page, a
    file that is not Parquet) into a ValueError naming the file; a missing file stays FileNotFoundError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{uri} is not a readable Parquet file: {e}") from e


@contextmanager
def open_parquet(uri: str):
    """``with open_parquet(uri) as pf``: a ``pyarrow.parquet.ParquetFile``; a file that is not readable
    Parquet, whether its footer or a page read inside the block is corrupt, raises ValueError naming it."""
    fs, path = resolve(uri)
    with naming_parquet(uri), fs.open_input_file(path) as fh:
        yield pq.ParquetFile(fh, page_checksum_verification=True)


def open_input_file(uri: str):
    """A seekable file object (pyarrow NativeFile) for readers such as PyAV that want random access."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write all of ``data`` to ``uri`` or nothing (temp file + os.replace locally; one PUT on S3)."""
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    _publish_local(path, data, os.replace)


def create_if_absent(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` only if nothing is there, atomically against a concurrent writer; True if
    this call created it. Locally: a complete temp file hard-linked to the name (link fails if it exists);
    on S3: a conditional PUT (``If-None-Match: *``), which the store refuses with 412 if the key exists."""
    fs, path = resolve(uri)
    if is_s3(uri):
        return _s3_put_if_absent(path, data)
    try:
        _publish_local(path, data, os.link)
        return True
    except FileExistsError:
        return False


def _publish_local(path: str, data: bytes, place) -> None:
    """Write ``data`` to a synced temp file beside ``path``, then ``place(tmp, path)`` (replace or link)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f"_tmp.{uuid.uuid4().hex}.{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _s3_put_if_absent(path: str, data: bytes) -> bool:
    """A PUT that S3 (and S3-compatible stores that support conditional writes) refuses if the key exists;
    pyarrow's S3 filesystem cannot send If-None-Match, so this one goes through boto3."""
    import boto3
    from botocore.exceptions import ClientError

    bucket, key = path.split("/", 1)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # a session of its own: boto3's default session is not thread-safe
    client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint(), region_name=region)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise StorageError(f"cannot write s3://{path}: {e}") from e


def write_parquet_atomic(table: pa.Table, uri: str, metadata: dict | None = None,
                         row_group_rows: int | None = None) -> None:
    """Write a table as one Parquet file atomically; ``metadata`` goes into the schema's key-value metadata,
    ``row_group_rows`` caps the rows per row group (readers that take row groups as units want them small)."""
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    # page checksums (CRC32), verified by this module's readers: a flipped byte is an error naming the file
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_rows, write_page_checksum=True)
    write_bytes_atomic(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """Read one Parquet file, or every part of a dataset folder (``list_parts``), into one table."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        files = [uri]
    else:
        files = list_parts(uri)
    if not files:
        if schema is None:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    tables = []
    for f in files:
        ffs, fpath = resolve(f)
        with naming_parquet(f):
            tables.append(pq.read_table(fpath, filesystem=ffs, columns=columns, page_checksum_verification=True))
    if schema is not None:
        target = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        tables = [t.select(target.names).cast(target) for t in tables]
    return pa.concat_tables(tables)


def read_json(uri: str) -> dict:
    return json.loads(read_bytes(uri).decode())


def write_json_atomic(uri: str, obj: dict) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def check_writable(uri: str) -> None:
    """Fail fast, before any work, if ``uri`` cannot be written (missing bucket, bad credentials)."""
    probe = join(uri, f"_tmp.write-check.{uuid.uuid4().hex}")
    try:
        write_bytes_atomic(probe, b"ok")
        delete(probe)
    except Exception as e:  # pyarrow raises OSError with the S3 error text
        raise StorageError(f"cannot write to {uri}: {e}") from e


def check_readable(uri: str) -> None:
    """Fail fast if ``uri`` does not exist or cannot be listed/read."""
    try:
        ok = exists(uri)
    except Exception as e:
        raise StorageError(f"cannot read {uri}: {e}") from e
    if not ok:
        raise StorageError(f"input not found: {uri}")


def config_hash(obj: dict) -> str:
    """A short stable hash of a JSON-able config, stamped into manifests and checked on resume."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
