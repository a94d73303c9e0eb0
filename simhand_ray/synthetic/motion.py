"""Smooth hand motion for a synthetic video: random key poses, eased interpolation between them.

A hand's track is a few key frames, each with a pose (20 joint angles), a view (roll, pitch, yaw) and a
place (normalised image position u, v of the palm centre and its depth z in metres). Between keys every
quantity is eased with smoothstep, so motion starts and stops gently; angles take the short way round.
Key poses are drawn either fresh or from a pool shared by all videos (pose and view together), so that
hands with similar 2D poses occur in different videos: the positives SiMHand mines (SPEC §2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simhand_ray.synthetic import hand_model as hm


@dataclass(frozen=True)
class PosePool:
    """Key poses shared across videos: poses (P, 20) radians, views (P, 3) roll/pitch/yaw radians."""
    poses: np.ndarray
    views: np.ndarray


def sample_pool(rng: np.random.Generator, size: int) -> PosePool:
    poses = np.stack([hm.sample_pose(rng) for _ in range(size)]) if size else np.zeros((0, hm.POSE_DIM))
    views = np.stack([hm.sample_view(rng) for _ in range(size)]) if size else np.zeros((0, 3))
    return PosePool(poses, views)


@dataclass(frozen=True)
class HandTrack:
    """Key frames of one hand: keys (k,) increasing frame numbers starting at 0 and reaching the last
    frame; poses (k, 20); views (k, 3); places (k, 3) as (u, v, z) with u, v in [0, 1] of the image."""
    keys: np.ndarray
    poses: np.ndarray
    views: np.ndarray
    places: np.ndarray


def mirror_view(view: np.ndarray) -> np.ndarray:
    """The view of a left hand that is the mirror image of a right hand seen with ``view`` (roll, pitch,
    yaw): M rot_z(r) rot_x(p) rot_y(y) M = rot_z(-r) rot_x(p) rot_y(-y) for the mirror M = diag(-1, 1, 1)."""
    return np.asarray(view) * np.array([-1.0, 1.0, -1.0])


def sample_track(rng: np.random.Generator, frames: int, pool: PosePool, pool_prob: float,
                 key_gap: tuple[int, int], u_range: tuple[float, float], v_range: tuple[float, float],
                 z_range: tuple[float, float], left: bool = False,
                 roll_range: tuple[float, float] | None = None) -> HandTrack:
    """Random key frames every key_gap[0]..key_gap[1] frames covering [0, frames - 1].

    Pool key poses get a little noise (3 degrees per joint, 5 degrees of view) so recurrences are similar,
    not identical. Pool views are right-hand views: a left hand takes their mirror image, so once the
    mine job mirrors it to a right hand its 2D pose matches the pool's. ``roll_range`` (radians) keeps the
    hand's in-plane rotation in a range (e.g. each arm coming from its own side when both hands show);
    a pool key outside it is replaced by a fresh one.
    """
    keys = [0]
    while keys[-1] < frames - 1:
        keys.append(min(keys[-1] + int(rng.integers(key_gap[0], key_gap[1] + 1)), max(frames - 1, 1)))
    poses, views, places = [], [], []
    def in_range(view):
        return roll_range is None or roll_range[0] <= view[0] <= roll_range[1]

    for _ in keys:
        use_pool = len(pool.poses) and rng.random() < pool_prob
        i = int(rng.integers(len(pool.poses))) if use_pool else 0
        pose_noise = np.deg2rad(rng.normal(0.0, 3.0, hm.POSE_DIM))
        view_noise = np.deg2rad(rng.normal(0.0, 5.0, 3))
        view = (mirror_view(pool.views[i]) if left else pool.views[i]) + view_noise if use_pool else None
        if use_pool and in_range(view):
            poses.append(hm.clip_pose(pool.poses[i] + pose_noise))
            views.append(view)
        else:
            poses.append(hm.sample_pose(rng))
            view = hm.sample_view(rng)
            if roll_range is not None:
                view[0] = rng.uniform(*roll_range)
            views.append(view)
        places.append([rng.uniform(*u_range), rng.uniform(*v_range), rng.uniform(*z_range)])
    return HandTrack(np.array(keys), np.array(poses), np.array(views), np.array(places))


def _ease(s: float) -> float:
    return s * s * (3.0 - 2.0 * s)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def track_at(track: HandTrack, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pose (20,), view (3,), place (3,)) at a frame, eased between the surrounding keys."""
    keys = track.keys
    i = int(np.clip(np.searchsorted(keys, frame, side="right") - 1, 0, len(keys) - 1))
    if i == len(keys) - 1:
        return track.poses[i], track.views[i], track.places[i]
    w = _ease((frame - keys[i]) / max(keys[i + 1] - keys[i], 1))
    pose = track.poses[i] + w * (track.poses[i + 1] - track.poses[i])
    view = track.views[i] + w * _wrap(track.views[i + 1] - track.views[i])
    place = track.places[i] + w * (track.places[i + 1] - track.places[i])
    return hm.clip_pose(pose), view, place


def hand_translation(rotation: np.ndarray, centre_local: np.ndarray, place: np.ndarray, K: np.ndarray,
                     width: int, height: int) -> np.ndarray:
    """(3,) translation putting the (already mirrored) hand-frame point ``centre_local`` at image
    position (u * width, v * height) and depth z."""
    u, v, z = place
    ray = np.linalg.solve(K, np.array([u * width, v * height, 1.0]))
    return ray * z - rotation @ centre_local
