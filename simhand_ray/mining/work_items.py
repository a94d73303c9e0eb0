"""The label stage's units of work: a typed ``WorkItem`` (a video segment, a chunk of images, or an input that
cannot be read) and the planning that turns input files into them.

Work items are named after their files' identities (``InputFile.key``), never after the routes or the set of
inputs, so adding, removing or reordering inputs between runs leaves every labeled hand as it was: a video
segment is ``{key}-{start:010d}``, an unreadable video ``{key}-reject``, a chunk of images ``img-{digest of its
images' keys}``. An image joins one chunk for good (see ``plan_images``).
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from simhand_ray import storage
from simhand_ray.config import LabelConfig, from_dict
from simhand_ray.mining.frames import InputError, Segment, plan_segments, probe_video
from simhand_ray.mining.inputs import InputFile, digest

log = logging.getLogger(__name__)

PLAN_TASK_CPUS = 0.5        # a planning task probes + splits videos: mostly I/O
VIDEOS_PER_PLAN_TASK = 16
INLINE_PLAN_MAX_VIDEOS = 256  # fewer are probed in driver threads (~2 ms a local file; a task's start ~1 s)
INLINE_PLAN_THREADS = 8
KINDS = ("video", "images", "reject")


@dataclass(frozen=True)
class WorkItem:
    """One unit of labeling and of commit. ``video``: frames [start, end) of ``file`` (``end`` None: to the end
    of a video whose length is unknown), decoded from the keyframe with timestamps ``seek_ts``; ``images``:
    a chunk of image files; ``reject``: ``file`` cannot be opened, for ``reason`` (``detail`` says more)."""
    work_id: str
    kind: str
    file: InputFile | None = None             # video / reject: the file and the route it is labeled under
    start: int = 0
    end: int | None = None
    seek_ts: tuple | None = None
    declared: int = 0                         # video: the frames its header declares (0: unknown)
    reason: str = ""
    detail: str = ""
    images: tuple[InputFile, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"work item kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "images") != (self.file is None):
            raise ValueError(f"a {self.kind} work item {'has no' if self.kind == 'images' else 'needs a'} file")

    @property
    def segment(self) -> Segment:
        return Segment(self.start, self.end, self.seek_ts)

    @property
    def frame_range(self) -> tuple[int, int]:
        """(first frame, end frame) as the output tables record them: -1 for unknown or not a video."""
        if self.kind != "video":
            return -1, -1
        return self.start, self.end if self.end is not None else -1

    def to_json(self) -> str:
        """The item as one JSON string (the Ray Data payload)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkItem:
        d = json.loads(text)
        return cls(**dict(d, file=InputFile(**d["file"]) if d["file"] else None,
                          seek_ts=tuple(d["seek_ts"]) if d["seek_ts"] is not None else None,
                          images=tuple(InputFile(**f) for f in d["images"])))


def plan_video(f: InputFile, cfg: LabelConfig) -> list[WorkItem]:
    """One video -> its segments as work items, or one reject item if it cannot be opened."""
    try:
        info = probe_video(f.uri, scan=False)
        long = (cfg.max_frames_per_video or info.declared_frames) > cfg.segment_frames
        if long:  # only long videos pay for the demux scan that finds keyframes to split at
            info = probe_video(f.uri, scan=True)
    except InputError as e:
        return [WorkItem(f"{f.key}-reject", "reject", f, reason=e.reason, detail=e.detail)]
    return [WorkItem(f"{f.key}-{seg.start:010d}", "video", f, start=seg.start, end=seg.end, seek_ts=seg.seek_ts,
                     declared=info.declared_frames)
            for seg in plan_segments(info, cfg.segment_frames, cfg.max_frames_per_video)]


def plan_images(files: list[InputFile], per_item: int, done: set[str] = frozenset(),
                started: dict[str, list[InputFile]] | None = None) -> list[WorkItem]:
    """Images -> chunks as work items. A chunk started before (``started``: work_id -> its images, found
    by ``image_progress``) is redone with the same images, so its partial files are overwritten; images
    in ``done`` (their keys) or in a started chunk are left out; the rest form new chunks of ``per_item``
    in URI order, named after their images' keys."""
    started = started or {}
    out = [WorkItem(wid, "images", images=tuple(imgs)) for wid, imgs in sorted(started.items())]
    taken = set(done) | {f.key for imgs in started.values() for f in imgs}
    new = [f for f in files if f.key not in taken]
    for i in range(0, len(new), per_item):
        chunk = tuple(new[i:i + per_item])
        out.append(WorkItem("img-" + digest("\x1f".join(f.key for f in chunk)), "images", images=chunk))
    return out


def chunk_metadata(item: WorkItem) -> dict | None:
    """The Parquet metadata that lists a chunk's images in its hands/ and segments/ files (``image_progress``)."""
    return {"images": [asdict(f) for f in item.images]} if item.kind == "images" else None


def _chunk_images(uri: str) -> list[InputFile]:
    """The images of a chunk, recorded in its hands/ or segments/ file's metadata."""
    with storage.open_parquet(uri) as pf:
        meta = pf.schema_arrow.metadata or {}
    return [InputFile(**m) for m in json.loads(meta.get(b"images", b"[]"))]


def image_progress(output: str, done: set[str]) -> tuple[set[str], dict[str, list[InputFile]]]:
    """(keys of the images in committed chunks, work_id -> images of each chunk started but not
    committed: its hands/ file is written, its segments/ marker is not)."""
    def files(sub: str, ids) -> list[str]:
        return [storage.join(output, sub, f"{w}.parquet") for w in sorted(ids)]

    hands = {storage.basename(u)[:-len(".parquet")] for u in storage.list_parts(storage.join(output, "hands"))}
    committed = [w for w in done if w.startswith("img-")]
    started = [w for w in hands - done if w.startswith("img-")]
    with ThreadPoolExecutor(INLINE_PLAN_THREADS) as pool:   # footers only; many small reads on S3
        done_imgs = list(pool.map(_chunk_images, files("segments", committed)))
        started_imgs = list(pool.map(_chunk_images, files("hands", started)))
    return ({f.key for imgs in done_imgs for f in imgs}, dict(zip(sorted(started), started_imgs)))


def pin_partial_videos(items: list[WorkItem], done: set[str], output: str) -> list[WorkItem]:
    """A video with some segments done keeps the source and video_id it was labeled under, though this
    run reaches it by another route (another input naming the same file)."""
    done_keys = {w.rsplit("-", 1)[0] for w in done if not w.startswith("img-")}
    pinned: dict[str, dict] = {}
    out = []
    for it in items:
        if it.kind == "video" and it.work_id not in done and it.file.key in done_keys:
            key = it.file.key
            if key not in pinned:
                marker = next(w for w in sorted(done) if w.startswith(key + "-"))
                row = storage.read_parquet(storage.join(output, "segments", f"{marker}.parquet")).to_pylist()[0]
                pinned[key] = {k: row[k] for k in ("uri", "source", "video_id")}
            it = replace(it, file=replace(it.file, **pinned[key]))
        out.append(it)
    return out


def plan_videos(files: list[dict], cfg_dict: dict) -> list[WorkItem]:
    """A chunk of videos -> their work items (runs as a Ray task: probing opens every file)."""
    cfg = from_dict(LabelConfig, cfg_dict)
    return [item for f in files for item in plan_video(InputFile(**f), cfg)]


def plan_all_videos(videos: list[InputFile], cfg: LabelConfig) -> list[WorkItem]:
    """Every video's work items: in driver threads for a few videos, else in parallel Ray tasks."""
    import ray

    t0 = time.time()
    if len(videos) <= INLINE_PLAN_MAX_VIDEOS:
        with ThreadPoolExecutor(INLINE_PLAN_THREADS) as pool:   # probing is I/O: opening, demuxing
            parts = list(pool.map(lambda f: plan_video(f, cfg), videos))
        where = "driver threads"
    else:
        plan = ray.remote(num_cpus=PLAN_TASK_CPUS)(plan_videos)
        per = VIDEOS_PER_PLAN_TASK
        chunks = [[asdict(f) for f in videos[i:i + per]] for i in range(0, len(videos), per)]
        log.info("label: %d planning tasks, each {CPU: %s}", len(chunks), PLAN_TASK_CPUS)
        parts = ray.get([plan.remote(c, asdict(cfg)) for c in chunks])
        where = f"{len(chunks)} Ray tasks"
    if videos:
        log.debug("label: planned %d videos in %.1f s (%s)", len(videos), time.time() - t0, where)
    return [it for part in parts for it in part]
