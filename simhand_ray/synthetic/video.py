"""Synthetic hand videos with ground truth: plan a video (one person), render its frames, encode with PyAV,
write the sidecar labels.

Everything a video contains is drawn from ``np.random.default_rng([seed, STREAM, index])`` streams, so a
(config, index) pair always gives the same frames and byte-identical labels, wherever it runs. A pool of
key poses drawn from the seed alone is shared by all videos (similar hands across videos).
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import av
import numpy as np

from simhand_ray import storage
from simhand_ray.config import SynthConfig
from simhand_ray.mining.labelers import sidecar_labels as lb
from simhand_ray.synthetic import hand_model as hm
from simhand_ray.synthetic import background as bg
from simhand_ray.synthetic import freihand_export as fh
from simhand_ray.synthetic import motion
from simhand_ray.synthetic import raster
from simhand_ray.synthetic import render

# Independent random streams per purpose (so adding draws to one never shifts another).
_POOL, _PLAN, _NOISE, _CROP = 0, 1, 2, 3
HAND_LENGTH = 0.19   # metres, wrist to middle fingertip of an average hand (sets the on-screen size)


def video_id(index: int) -> str:
    return f"synth_{index:05d}"


def pose_pool(cfg: SynthConfig) -> motion.PosePool:
    return motion.sample_pool(np.random.default_rng([cfg.seed, _POOL]), cfg.pool_size)


@dataclass(frozen=True)
class Occluder:
    """A capsule crossing in front of hand 0 during frames [start, end): offset (metres) perpendicular to
    its axis moves from -travel to +travel; it sits ``gap`` metres in front of the palm."""
    start: int
    end: int
    angle: float
    length: float
    radius: float
    travel: float
    gap: float
    color: np.ndarray


@dataclass(frozen=True)
class VideoPlan:
    """Everything random about one video (one person), drawn up front."""
    index: int
    video_id: str
    K: np.ndarray
    shape: hm.HandShape
    look: render.Appearance
    hands: tuple[tuple[str, motion.HandTrack], ...]     # (handedness, track)
    canvas: np.ndarray
    pan: np.ndarray
    occluder: Occluder | None


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole K with square pixels, principal point at the image centre (continuous coordinates)."""
    f = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def plan_video(cfg: SynthConfig, index: int, pool: motion.PosePool, photos: Sequence[np.ndarray]) -> VideoPlan:
    rng = np.random.default_rng([cfg.seed, _PLAN, index])
    K = intrinsics(cfg.width, cfg.height, rng.uniform(*cfg.fov_deg))
    shape = hm.sample_shape(rng)
    look = render.sample_appearance(rng)
    f = K[0, 0]
    z_range = (f * HAND_LENGTH / (cfg.hand_size[1] * cfg.height), f * HAND_LENGTH / (cfg.hand_size[0] * cfg.height))
    v_range = (0.35, 0.65)
    gap = (cfg.key_gap[0], cfg.key_gap[1])
    F = cfg.frames_per_video
    if rng.random() < cfg.two_hands_prob:
        # each arm comes from its own side of the frame (fingers up or leaning inwards), so arms do not cross
        hands = (("right", motion.sample_track(rng, F, pool, cfg.pool_prob, gap, (0.55, 0.75), v_range, z_range,
                                               left=False, roll_range=(-np.deg2rad(100), np.deg2rad(15)))),
                 ("left", motion.sample_track(rng, F, pool, cfg.pool_prob, gap, (0.25, 0.45), v_range, z_range,
                                              left=True, roll_range=(-np.deg2rad(15), np.deg2rad(100)))))
    else:
        side = "right" if rng.random() < 0.5 else "left"
        hands = ((side, motion.sample_track(rng, F, pool, cfg.pool_prob, gap, (0.3, 0.7), v_range, z_range,
                                            left=side == "left")),)
    canvas = bg.make_canvas(rng, photos, cfg.width, cfg.height, cfg.photo_prob)
    pan = bg.pan_path(rng, canvas, cfg.width, cfg.height)
    occluder = None
    if rng.random() < cfg.occluder_prob:
        start = int(rng.integers(0, max(F // 2, 1)))
        occluder = Occluder(start=start, end=int(min(F, start + rng.integers(max(F // 4, 2), max(F // 2, 3)))),
                            angle=float(rng.uniform(0, np.pi)), length=float(rng.uniform(0.15, 0.4)),
                            radius=float(rng.uniform(0.01, 0.035)), travel=float(rng.uniform(0.06, 0.12)),
                            gap=float(rng.uniform(0.04, 0.12)), color=rng.uniform(0.05, 0.95, 3))
    return VideoPlan(index, video_id(index), K, shape, look, hands, canvas, pan, occluder)


@dataclass
class PosedHand:
    """One hand in one frame, in camera space: joints (21, 3), frames (21, 3, 3)."""
    hand_index: int
    handedness: str
    joints: np.ndarray
    frames: np.ndarray


def pose_hands(plan: VideoPlan, frame: int, width: int, height: int) -> list[PosedHand]:
    out = []
    centre = 0.5 * plan.shape.base[2]          # palm centre: halfway from the wrist to the middle MCP
    for h, (side, track) in enumerate(plan.hands):
        pose, view, place = motion.track_at(track, frame)
        joints, frames = hm.forward_kinematics(pose, plan.shape)
        rot = hm.view_rotation(*view)
        left = side == "left"
        t = motion.hand_translation(rot, hm.MIRROR @ centre if left else centre, place, plan.K, width, height)
        jc, fc = hm.place_hand(joints, frames, rot, t, left)
        out.append(PosedHand(h, side, jc, fc))
    return out


def _occluder_prims(occ: Occluder, hand: PosedHand, frame: int) -> raster.Primitives | None:
    if not occ.start <= frame < occ.end:
        return None
    s = (frame - occ.start) / max(occ.end - occ.start - 1, 1)
    centre = 0.5 * (hand.joints[0] + hand.joints[9])
    axis = np.array([np.cos(occ.angle), np.sin(occ.angle), 0.0])
    perp = np.array([-axis[1], axis[0], 0.0])
    c = centre + perp * (occ.travel * (2.0 * s - 1.0)) - np.array([0.0, 0.0, occ.gap])
    return render.occluder_primitives(c - axis * occ.length / 2, c + axis * occ.length / 2, occ.radius, occ.color)


@dataclass
class RenderedFrame:
    """One frame: image (H, W, 3) uint8 RGB, its label rows (sidecar_labels.LABELS names) and posed hands."""
    index: int
    image: np.ndarray
    rows: list[dict]
    hands: list[PosedHand]


def render_frames(cfg: SynthConfig, plan: VideoPlan, video_file: str) -> Iterator[RenderedFrame]:
    """Render every frame of a planned video with its labels (hands wholly outside the image get no row)."""
    W, H = cfg.width, cfg.height
    for frame in range(cfg.frames_per_video):
        t = frame / max(cfg.frames_per_video - 1, 1)
        background = bg.frame_background(plan.canvas, plan.pan, t, W, H)
        hands = pose_hands(plan, frame, W, H)
        prims = raster.Primitives()
        for hand in hands:
            prims.extend(render.hand_primitives(hand.joints, hand.frames, plan.shape, plan.look, hand.hand_index))
        if plan.occluder is not None:
            occ = _occluder_prims(plan.occluder, hands[0], frame)
            if occ is not None:
                prims.extend(occ)
        z_ref = float(min(h.joints[:, 2].min() for h in hands))
        light = raster.Light(plan.look.light_dir, plan.look.light_color, plan.look.ambient, z_ref)
        drawn = raster.rasterize(prims, plan.K, W, H, light, cfg.supersample)
        image = render.apply_camera(raster.composite(background, drawn), plan.look,
                                    np.random.default_rng([cfg.seed, _NOISE, plan.index, frame]))
        rows = []
        for hand in hands:
            box = render.hand_box(hand.joints, plan.shape.radii, plan.K, W, H)
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            rows.append(dict(
                video_id=plan.video_id, video_file=video_file, frame_index=frame, hand_index=hand.hand_index,
                handedness=hand.handedness, image_width=W, image_height=H,
                keypoints_2d=raster.project(hand.joints, plan.K), joints_3d=hand.joints, K=plan.K, box=box,
                visibility=render.visibility(drawn, hand.joints, hand.frames, plan.shape.radii, plan.K,
                                             hand.hand_index, W, H)))
        yield RenderedFrame(frame, image, rows, hands)


def choose_codec(requested: str = "auto") -> str:
    """The encoder to use: libx264 (H.264) when this PyAV build has it, else mpeg4."""
    if requested != "auto":
        return requested
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # PyAV raises UnknownCodecError (or ValueError in older builds)
        return "mpeg4"


class VideoEncoder:
    """Encode RGB frames into an in-memory MP4 (one PUT to object storage afterwards)."""

    def __init__(self, width: int, height: int, fps: int, codec: str, crf: int):
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        options = {"crf": str(crf), "preset": "veryfast"} if codec == "libx264" else {}
        self.stream = self.container.add_stream(codec, rate=fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if codec != "libx264":
            self.stream.bit_rate = 4_000_000

    def add(self, image: np.ndarray) -> None:
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self.container.mux(packet)

    def finish(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buffer.getvalue()


@dataclass
class VideoResult:
    """What rendering one video produced (small enough to send back from a Ray task)."""
    video_id: str
    video_uri: str
    labels_uri: str
    frames: int
    hands: int                      # label rows
    seconds: float                  # wall time
    cpu_seconds: float              # CPU time of this process (rendering + encoding + writing)
    codec: str
    freihand: list = field(default_factory=list)        # freihand_export.Sample
    montage: list = field(default_factory=list)         # (image, rows) of a few frames


def make_video(cfg: SynthConfig, index: int, output_dir: str, photos: Sequence[np.ndarray],
               pool: motion.PosePool | None = None, montage_frames: int = 0, freihand_every: int = 0) -> VideoResult:
    """Render, encode and write one video + its sidecar labels under ``output_dir`` (path or s3://).

    The labels are written last: a labels file present means its video is complete. Also hands back
    ``montage_frames`` evenly spaced frames with their labels, and a FreiHAND sample of every hand wholly
    inside the frame on every ``freihand_every``-th frame (0: none).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    pool = pose_pool(cfg) if pool is None else pool
    plan = plan_video(cfg, index, pool, photos)
    codec = choose_codec(cfg.codec)
    ext = ".mp4"
    video_file = plan.video_id + ext
    video_uri = storage.join(output_dir, video_file)
    encoder = VideoEncoder(cfg.width, cfg.height, cfg.fps, codec, cfg.crf)
    rows, samples, montage = [], [], []
    montage_at = set(np.linspace(0, cfg.frames_per_video - 1, montage_frames).round().astype(int).tolist())
    for fr in render_frames(cfg, plan, video_file):
        encoder.add(fr.image)
        rows.extend(fr.rows)
        if fr.index in montage_at:
            montage.append((fr.image, fr.rows))
        if freihand_every and fr.index % freihand_every == 0:
            for row in fr.rows:
                kp = np.asarray(row["keypoints_2d"])
                if np.all((kp >= 0) & (kp < [cfg.width, cfg.height])):
                    rng = np.random.default_rng([cfg.seed, _CROP, index, fr.index, row["hand_index"]])
                    samples.append(fh.make_sample(fr.image, kp, np.asarray(row["joints_3d"]), plan.K,
                                                  row["handedness"] == "left", rng, plan.video_id))
    storage.write_bytes_atomic(video_uri, encoder.finish())
    labels_uri = lb.sidecar_uri(video_uri)
    storage.write_parquet_atomic(lb.labels_table(rows), labels_uri,
                                 metadata={"synth_config": asdict(cfg), "video_id": plan.video_id})
    return VideoResult(plan.video_id, video_uri, labels_uri, cfg.frames_per_video, len(rows),
                       time.perf_counter() - t0, time.process_time() - c0, codec, samples, montage)
