"""Videos and images -> RGB frames. Decoding is streaming (PyAV), keeps 1 frame in N in display order.

Frame indices: the decoder emits frames in display order, so a frame's index is the count of frames the
decoder has emitted since a known keyframe. Timestamps are not used: some containers carry wrong ones
(Megamind.avi's frame pts come in decode order, and its last keyframe's pts is 270 for frame 200).

Long videos are split into segments that start at keyframes (found by a demux-only scan, no decoding), so
each segment decodes independently after one seek; a keyframe's index is its position in the packet
order, which equals its display position for closed GOPs (all-intra, IDR, MPEG-4 Part 2 as in the sample).

Two decode modes: ``all`` decodes every frame and keeps indices divisible by N; ``keyframes`` feeds only
keyframe packets to the decoder (4-10x cheaper) and yields the keyframes, at the indices they really have.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from simhand_ray import storage

log = logging.getLogger(__name__)


class InputError(Exception):
    """An input that cannot be read; ``reason`` is a short machine-readable kind for the rejects table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class VideoInfo:
    declared_frames: int          # frames the header declares (0 if unknown)
    fps: float
    width: int
    height: int
    keyframes: tuple[int, ...]    # packet positions of keyframes (only for scanned videos)
    keyframe_ts: tuple[tuple, ...]  # their (pts, dts), for seeking
    packets: int                  # packets found by the scan (0 if not scanned)


def _open(uri: str):
    """Open a video with PyAV from a local path or a seekable S3 file; map failures to InputError."""
    import av   # here, not at the top: images decode without PyAV (e.g. on a GPU node without it)

    try:
        src = storage.resolve(uri)[1] if not storage.is_s3(uri) else storage.open_input_file(uri)
        container = av.open(src, mode="r", metadata_errors="ignore")
    except FileNotFoundError as e:
        raise InputError("missing", str(e)) from e
    except (av.error.InvalidDataError, av.error.EOFError) as e:
        raise InputError("not_a_video", f"PyAV cannot open it as a video: {e}") from e
    except OSError as e:
        if not storage.exists(uri):
            raise InputError("missing", f"no such file: {uri}") from e
        raise InputError("unreadable", str(e)) from e
    if not container.streams.video:
        container.close()
        raise InputError("not_a_video", "the file has no video stream")
    return container


def probe_video(uri: str, scan: bool) -> VideoInfo:
    """Header facts of a video; with ``scan``, also the keyframe positions from a demux-only pass."""
    import av

    with _open(uri) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 30)
        declared = int(s.frames or 0)
        if not declared and s.duration and s.time_base:
            declared = int(round(float(s.duration * s.time_base) * fps))
        elif not declared and c.duration:
            declared = int(round(c.duration / 1e6 * fps))
        keys, key_ts, n = [], [], 0
        if scan:
            try:
                for packet in c.demux(s):
                    if packet.size == 0:
                        continue
                    if packet.is_keyframe:
                        keys.append(n)
                        key_ts.append((packet.pts, packet.dts))
                    n += 1
            except av.error.FFmpegError as e:  # a damaged tail: keep what was scanned
                log.warning("demux scan of %s stopped at packet %d: %s", uri, n, e)
        return VideoInfo(declared, fps, s.codec_context.width, s.codec_context.height,
                         tuple(keys), tuple(key_ts), n)


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of a video (``end`` None: to the end of a video whose length is unknown); decoding
    starts at the keyframe at ``start``, whose packet has the timestamps ``seek_ts`` = (pts, dts), or at the
    file start (None)."""
    start: int
    end: int | None
    seek_ts: tuple | None


def plan_segments(info: VideoInfo, segment_frames: int, max_frames: int = 0) -> list[Segment]:
    """Split a video at keyframes into segments of about ``segment_frames`` frames (one if not scanned)."""
    total = info.packets or info.declared_frames
    if max_frames:
        total = min(total, max_frames) if total else max_frames
    if not info.keyframes or total <= segment_frames:
        return [Segment(0, total or None, None)]
    cuts = [0]
    for pos, ts in zip(info.keyframes, info.keyframe_ts):
        if pos >= total:
            break
        if pos - cuts[-1] >= segment_frames and any(t is not None for t in ts):
            cuts.append(pos)
    seek = dict(zip(info.keyframes, info.keyframe_ts))
    bounds = cuts + [total]
    return [Segment(a, b, seek[a] if a else None) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class DecodeStats:
    decoded: int = 0          # frames the decoder emitted inside the segment
    kept: int = 0             # frames yielded (1 in N, or keyframes)


class _Overshot(Exception):
    """The seek landed after the segment's keyframe (some containers seek on another timestamp)."""


def decode_segment(uri: str, seg: Segment, every_n: int, mode: str = "all",
                   stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, RGB uint8 (H, W, 3)) for the kept frames of one segment, streaming.

    ``all``: every frame is decoded; those with ``index % every_n == 0`` are kept. ``keyframes``: only
    keyframe packets are decoded; every keyframe in the segment is kept (``every_n`` does not apply).
    A truncated file simply ends early: ``stats.decoded`` tells the caller how far it got.
    """
    stats = stats if stats is not None else DecodeStats()
    try:
        yield from _decode(uri, seg, every_n, mode, stats, seek=True)
    except _Overshot:  # read from the file start instead, skipping packets up to the keyframe
        log.info("%s: seek overshot the keyframe of frame %d; reading from the start", uri, seg.start)
        yield from _decode(uri, seg, every_n, mode, stats, seek=False)


def _decode(uri: str, seg: Segment, every_n: int, mode: str, stats: DecodeStats, seek: bool):
    import av

    with _open(uri) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO" if mode == "all" else "SLICE"
        target = tuple(seg.seek_ts) if seg.seek_ts is not None else None
        if target is not None and seek:  # seek at or before the keyframe (containers seek on pts or dts)
            c.seek(min(t for t in target if t is not None), stream=s, backward=True, any_frame=False)
        started = target is None
        end = seg.end if seg.end is not None else math.inf
        position = seg.start        # decode-order position of the next packet
        emitted = seg.start         # display index of the next frame the decoder emits
        key_positions: list[int] = []  # keyframes mode: positions of the keyframe packets sent, in order

        def frames_of(packet):
            try:
                return s.decode(packet)
            except av.error.InvalidDataError as e:  # one damaged packet: skip it, keep decoding
                log.debug("%s: undecodable packet at %d: %s", uri, position, e)
                return []

        def emit(frames):
            nonlocal emitted
            for frame in frames:
                idx = key_positions.pop(0) if mode == "keyframes" else emitted
                emitted += 1
                if idx >= end:
                    continue
                stats.decoded += 1
                if mode == "keyframes" or idx % every_n == 0:
                    stats.kept += 1
                    yield idx, frame.to_ndarray(format="rgb24")

        try:
            for packet in c.demux(s):
                if packet.size == 0:
                    continue
                if not started:  # the seek may land before our keyframe: skip to it
                    if (packet.pts, packet.dts) != target:
                        if seek and None not in (packet.dts, target[1]) and packet.dts > target[1]:
                            raise _Overshot()
                        continue
                    started = True
                if position >= end:
                    break
                if mode == "keyframes":
                    if packet.is_keyframe:
                        key_positions.append(position)
                        yield from emit(frames_of(packet))
                else:
                    yield from emit(frames_of(packet))
                position += 1
        except av.error.FFmpegError as e:  # a damaged container: keep what decoded, the caller records it
            log.warning("%s: demux stopped at packet %d: %s", uri, position, e)
        yield from emit(frames_of(None))  # flush the frames the decoder still holds


def read_image(uri: str) -> np.ndarray:
    """An image file -> RGB uint8 (H, W, 3), EXIF orientation applied; InputError if unreadable."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise InputError("missing", str(e)) from e
    if not data:
        raise InputError("unreadable_image", "empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises on a truncated file instead of returning grey rows
            im = ImageOps.exif_transpose(im).convert("RGB")
            return np.asarray(im)
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise InputError("unreadable_image", f"{type(e).__name__}: {e}") from e
