"""``--input`` values -> the list of input files with their source and video id.

An input is a directory or s3:// prefix (scanned recursively for videos and images by extension), a single
video or image, or a manifest: ``.txt`` (one URI per line), ``.csv`` or ``.parquet`` with a ``uri`` column
and optional ``source`` and ``video_id`` columns. Relative paths in a manifest are relative to it.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass

import pyarrow.parquet as pq

from simhand_ray import storage
from simhand_ray.config import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class InputFile:
    uri: str
    source: str
    video_id: str       # hands sharing a video_id are never each other's positives
    kind: str           # "video" | "image"


def kind_of(uri: str) -> str | None:
    low = uri.lower()
    if low.endswith(VIDEO_EXTENSIONS):
        return "video"
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def clean_id(text: str) -> str:
    """An id safe to embed in hand_ids and file names: ':' and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._/-]+", "_", text).strip("/") or "_"


def _strip_ext(path: str) -> str:
    return os.path.splitext(path)[0]


def _rows_of_manifest(uri: str) -> list[dict]:
    data = storage.read_bytes(uri)
    low = uri.lower()
    if low.endswith(".parquet"):
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    elif low.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode())))
    else:
        rows = [{"uri": line.strip()} for line in data.decode().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    if rows and "uri" not in rows[0]:
        raise ValueError(f"manifest {uri} has no 'uri' column")
    base = uri.rsplit("/", 1)[0]
    for r in rows:
        u = str(r["uri"])
        if not storage.is_s3(u) and not u.startswith(("/", "file://")):
            r["uri"] = storage.join(base, u)
    return rows


def expand_inputs(inputs: tuple[str, ...], default_source: str = "") -> list[InputFile]:
    """Resolve every ``--input`` to input files (sorted, de-duplicated). Fails early on a missing input.

    Files in a manifest are taken as listed even with an unknown extension (they will be probed as videos
    and rejected with a reason if they are not), so nothing named by the user is silently dropped.
    """
    out: dict[str, InputFile] = {}
    for inp in inputs:
        storage.check_readable(inp)
        if storage.is_dir(inp):
            root = inp.rstrip("/")
            source = default_source or clean_id(storage.basename(root))
            for uri in storage.list_files(root, VIDEO_EXTENSIONS + IMAGE_EXTENSIONS):
                rel = uri[len(root) + 1:] if uri.startswith(root) else storage.basename(uri)
                out.setdefault(uri, InputFile(uri, source, clean_id(_strip_ext(rel)), kind_of(uri)))
        elif inp.lower().endswith(MANIFEST_EXTENSIONS):
            for r in _rows_of_manifest(inp):
                uri = r["uri"]
                source = clean_id(str(r.get("source") or default_source or "default"))
                vid = clean_id(str(r.get("video_id") or _strip_ext(storage.basename(uri))))
                out.setdefault(uri, InputFile(uri, source, vid, kind_of(uri) or "video"))
        else:
            kind = kind_of(inp)
            if kind is None:
                raise ValueError(f"--input {inp}: not a directory, manifest ({'/'.join(MANIFEST_EXTENSIONS)}), video or image")
            out.setdefault(inp, InputFile(inp, clean_id(default_source or "default"),
                                          clean_id(_strip_ext(storage.basename(inp))), kind))
    return sorted(out.values(), key=lambda f: f.uri)
