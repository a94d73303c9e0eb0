"""The one stage protocol: every stage's output folder carries ``_manifest.json``, opened with the hash of the
settings that shape the output, and is then fresh, resumed, or refused with one error type.

    m = StageManifest.open(folder, "graph", settings)       # fresh / same settings / StageMismatch
    if m.complete: return m.summary                          # a finished output is reused
    todo = m.pending(part_uris)                              # parts not yet written with these settings
    ... write each part with metadata=m.part_metadata() ...
    m.finish(summary)

The name starts with ``_`` so that pandas, pyarrow.dataset, Ray Data and DuckDB skip it when they open the
folder as a dataset (the Hive convention). The stamp is created only if absent (atomically, locally and on
S3), so of two jobs started together with different settings one is refused.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from simhand_ray import storage

MANIFEST = "_manifest.json"
#: Manifest names of earlier versions, each with its own format: an output holding one is refused.
LEGACY_MANIFESTS = ("manifest.json", "label_manifest.json", "pretrain.json")
STATUSES = ("running", "complete", "incomplete", "stopped")


class StageRefused(ValueError):
    """A run refused before it wrote anything; the message names what to change (the jobs exit 2 with it)."""


class StageMismatch(StageRefused):
    """An output folder that holds another run: other settings, another stage, or an older version's layout."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(d: dict) -> dict:
    """Settings as the manifest stores them (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(d, default=str))


def settings_diff(before: dict, now: dict, show: int = 8) -> str:
    """"k: old -> new, ..." over the (nested) settings that differ; keys only one side has are shown too."""
    a, b = _flatten(_plain(before)), _flatten(_plain(now))   # values, not containers: (0.9, 1.5) == [0.9, 1.5]
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:show]]
    return ", ".join(parts) + (f", ... ({len(keys) - show} more)" if len(keys) > show else "")


def part_hash(uri: str) -> str | None:
    """The config hash stamped into a Parquet part's schema metadata by the stage that wrote it."""
    with storage.open_parquet(uri) as pf:
        raw = (pf.schema_arrow.metadata or {}).get(b"config_hash")
    return json.loads(raw) if raw else None


@dataclass
class StageManifest:
    """A stage's ``_manifest.json``: {stage, config_hash, settings, status, created, ..., summary}."""
    folder: str
    record: dict = field(default_factory=dict)
    existed: bool = False                 # the folder held this run before ``open`` (a resume or a reuse)

    @property
    def uri(self) -> str:
        return storage.join(self.folder, MANIFEST)

    @property
    def stage(self) -> str:
        return self.record["stage"]

    @property
    def config_hash(self) -> str:
        return self.record["config_hash"]

    @property
    def complete(self) -> bool:
        return self.record.get("status") == "complete"

    @property
    def summary(self) -> dict | None:
        return self.record.get("summary")

    @classmethod
    def open(cls, folder: str, stage: str, settings: dict, info: dict | None = None) -> StageManifest:
        """Open ``folder`` for ``stage`` with ``settings`` (the JSON-able settings that shape the output).

        Absent: stamped now (status "running", plus ``info``). Present with the same hash: returned as it
        is (``existed``; ``complete`` says whether it finished). Present with other settings, another
        stage, or an older version's manifest: ``StageMismatch`` naming what differs, and nothing written.
        Call it once the inputs and the settings have been checked, so a refused run leaves no stamp.
        """
        chash = storage.config_hash(settings)
        record = {"stage": stage, "config_hash": chash, "settings": settings, "status": "running",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {})}
        uri = storage.join(folder, MANIFEST)
        if not storage.exists(uri):
            for name in LEGACY_MANIFESTS:
                if storage.exists(storage.join(folder, name)):
                    raise StageMismatch(f"{folder} holds output of an older simhand-ray ({name}); "
                                        "delete it or use another --output")
            if storage.create_if_absent(uri, json.dumps(record, indent=2, sort_keys=True).encode()):
                return cls(folder, record, existed=False)
        old = storage.read_json(uri)
        if old.get("stage") != stage:
            raise StageMismatch(f"{folder} holds the {old.get('stage')!r} stage's output, not the {stage!r} stage's: "
                                "use another --output")
        if old.get("config_hash") != chash:
            diff = settings_diff(old.get("settings", {}), settings) or "settings of another version"
            raise StageMismatch(f"{folder} holds {stage} output made with other settings or input ({diff}); "
                                "delete it or use another --output. Nothing was changed.")
        return cls(folder, old, existed=True)

    @classmethod
    def read(cls, folder: str, stage: str) -> StageManifest | None:
        """The manifest of ``stage`` in ``folder`` as it is (for a later stage reading this one's output), or
        None when there is none."""
        uri = storage.join(folder, MANIFEST)
        if not storage.exists(uri):
            return None
        record = storage.read_json(uri)
        if record.get("stage") != stage:
            raise StageMismatch(f"{folder} holds the {record.get('stage')!r} stage's output, not the {stage!r} stage's")
        return cls(folder, record, existed=True)

    @classmethod
    def require_complete(cls, folder: str, stage: str, hint: str) -> StageManifest:
        """The finished output of ``stage`` in ``folder``, else FileNotFoundError ending with ``hint``."""
        m = cls.read(folder, stage)
        if m is None or not m.complete:
            raise FileNotFoundError(f"no finished {stage} output at {folder}: {hint}")
        return m

    def part_metadata(self) -> dict:
        """Parquet schema metadata that stamps a part as written with these settings (see ``pending``)."""
        return {"config_hash": self.config_hash}

    def pending(self, part_uris: Iterable[str]) -> list[str]:
        """The parts still to write: absent, or written with other settings (a part is written whole or not
        at all, so a present part with this hash is done)."""
        return [u for u in part_uris if not (storage.exists(u) and part_hash(u) == self.config_hash)]

    def update(self, **fields) -> None:
        """Merge ``fields`` into the record and write it atomically (e.g. status, plan, last_run)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
        self.record.update(fields)
        storage.write_json_atomic(self.uri, self.record)

    def finish(self, summary: dict, status: str = "complete") -> None:
        """Record the run's summary and its ending (complete, or incomplete / stopped for a run cut short)."""
        self.update(status=status, summary=summary,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
