"""``--input`` values -> the list of input files with their source, video id and identity.

An input is a directory or s3:// prefix (scanned recursively for videos and images by extension), a single
video or image, or a manifest: ``.txt`` (one URI per line), ``.csv`` or ``.parquet`` with a ``uri`` column
and optional ``source`` and ``video_id`` columns. Relative paths in a manifest are relative to it.

Ids (see ``schema.HANDS``): a file's default video_id is its path below the input directory (or its file
name), extension included, passed through ``clean_id``, which keeps distinct names distinct. A file's
identity is its real path locally (symlinks resolved) or its URI on S3: a file reached more than once is
listed once, so it is labeled once and is one video.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass

import pyarrow.parquet as pq

from simhand_ray import storage
from simhand_ray.config import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class InputFile:
    uri: str
    source: str
    video_id: str       # hands sharing a video_id are never each other's positives
    kind: str           # "video" | "image"
    key: str = ""       # digest of the file's identity: names its work items, tags its hand_ids


def kind_of(uri: str) -> str | None:
    low = uri.lower()
    if low.endswith(VIDEO_EXTENSIONS):
        return "video"
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def digest(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def clean_id(text: str) -> str:
    """An id safe to embed in hand_ids and file names, distinct for distinct texts: a text made only of
    ``A-Z a-z 0-9 . _ / -`` (no leading/trailing '/') is kept as is; any other has its odd characters
    folded to '_' and gets '~' plus a hash of the original (``hand one`` -> ``hand_one~efd092f0``)."""
    text = str(text)
    folded = _UNSAFE.sub("_", text).strip("/") or "_"
    return text if folded == text else f"{folded}~{digest(text, 8)}"


def file_key(uri: str) -> str:
    """The digest of a file's identity (real path locally, URI on S3)."""
    return digest(storage.identity(uri))


def _relative(uri: str, root: str) -> str:
    """``uri``'s path below the directory ``root`` (both resolved, so relative and file:// roots work)."""
    base, path = storage.resolve(root)[1].rstrip("/"), storage.resolve(uri)[1]
    return path[len(base) + 1:] if path.startswith(base + "/") else storage.basename(uri)


def _manifest_dir(uri: str) -> str:
    if storage.is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return storage.resolve(uri)[1].rsplit("/", 1)[0]


def _read_manifest(uri: str) -> list[tuple[str, dict]]:
    """The manifest's rows as (where, row): where names the row for messages (``line 3``, ``row 0``)."""
    data = storage.read_bytes(uri)
    low = uri.lower()
    try:
        table = pq.read_table(io.BytesIO(data)) if low.endswith(".parquet") else None
        text = data.decode("utf-8-sig") if table is None else ""  # a spreadsheet's CSV may start with a BOM
    except ValueError as e:              # pyarrow's ArrowInvalid, UnicodeDecodeError
        raise ValueError(f"manifest {uri} cannot be read: {e}") from e
    if table is not None:
        if "uri" not in table.column_names:
            raise ValueError(f"manifest {uri} has no 'uri' column (columns: {table.column_names})")
        return [(f"row {i}", r) for i, r in enumerate(table.to_pylist())]
    if low.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if "uri" not in (reader.fieldnames or []):
            raise ValueError(f"manifest {uri} has no 'uri' column (header: {reader.fieldnames})")
        return [(f"line {reader.line_num}", r) for r in reader]
    return [(f"line {i}", {"uri": line.strip()}) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def _rows_of_manifest(uri: str) -> list[dict]:
    """The manifest's rows with absolute URIs; an empty manifest or a row without a uri is an error."""
    rows = _read_manifest(uri)
    if not rows:
        raise ValueError(f"manifest {uri} lists no inputs")
    base = _manifest_dir(uri)
    out = []
    for where, r in rows:
        u = str(r.get("uri") or "").strip()
        if not u:
            raise ValueError(f"manifest {uri}, {where}: the 'uri' is empty")
        if not storage.is_s3(u) and not u.startswith(("/", "file://")):
            u = storage.join(base, u)
        out.append(dict(r, uri=u))
    return out


def _files_of(inp: str, default_source: str) -> list[InputFile]:
    """One ``--input`` -> its files (a file reached twice inside it may appear twice)."""
    storage.check_readable(inp)
    if storage.is_dir(inp):
        source = clean_id(default_source or storage.basename(inp))
        return [InputFile(uri, source, clean_id(_relative(uri, inp)), kind_of(uri), file_key(uri))
                for uri in storage.list_files(inp, VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)]
    if inp.lower().endswith(MANIFEST_EXTENSIONS):
        return [InputFile(r["uri"], clean_id(r.get("source") or default_source or "default"),
                          clean_id(r.get("video_id") or storage.basename(r["uri"])),
                          kind_of(r["uri"]) or "video", file_key(r["uri"]))
                for r in _rows_of_manifest(inp)]
    kind = kind_of(inp)
    if kind is None:
        raise ValueError(f"--input {inp}: not a directory, manifest ({'/'.join(MANIFEST_EXTENSIONS)}), video or image")
    return [InputFile(inp, clean_id(default_source or "default"), clean_id(storage.basename(inp)), kind, file_key(inp))]


def expand_inputs(inputs: tuple[str, ...], default_source: str = "") -> list[InputFile]:
    """Resolve every ``--input`` to input files, sorted by URI, each real file once. Fails early on a
    missing input or a bad manifest.

    A file reached more than once (symlink, two folders, a manifest row twice) keeps one route: one by its
    real path if any, and of those the one whose (source, video_id, uri) sorts first, so the order of the
    inputs does not matter. Files in a manifest
    are taken as listed even with an unknown extension (they will be probed as videos and rejected with
    a reason if they are not), so nothing named by the user is silently dropped.
    """
    best: dict[str, tuple[tuple, InputFile]] = {}
    for inp in inputs:
        for f in _files_of(inp, default_source):
            rank = (storage.resolve(f.uri)[1] != storage.identity(f.uri), f.source, f.video_id, f.uri)
            if f.key not in best or rank < best[f.key][0]:
                best[f.key] = (rank, f)
    return sorted((f for _, f in best.values()), key=lambda f: f.uri)
