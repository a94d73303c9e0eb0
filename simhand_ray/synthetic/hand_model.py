"""A kinematic hand: 21 joints in SPEC order, per-person bone lengths, joint-angle limits, key poses.

The hand is built as a right hand in its own frame (metres): origin at the wrist joint, x radial (towards
the thumb), y distal (wrist -> middle finger), z palmar (out of the palm); (x, y, z) is right-handed. A
left hand is the mirror image (x -> -x) of the same person's right hand, applied before the global
rotation, so one model serves both.

Each finger (thumb first) is a fixed offset from the wrist to its base joint (thumb CMC, finger MCP), a
2-DOF base joint (flexion, abduction) and two 1-DOF hinges (flexion). A pose is therefore 20 angles in
radians, laid out finger by finger as ``[base_flex, base_abd, mid_flex, tip_flex]``; flexion bends towards
the palm, abduction is positive towards the radial side (the thumb) for every digit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FINGERS = 5
POSE_DIM = 4 * NUM_FINGERS
FINGERS = ("thumb", "index", "middle", "ring", "little")

# Joint limits in degrees, [low, high] per pose entry (order: base_flex, base_abd, mid_flex, tip_flex).
# Hand-anatomy ranges (active motion), slightly narrowed so sampled poses stay natural.
_LIMITS_DEG = np.array([
    [[-20, 55], [-20, 55], [-10, 60], [-20, 80]],     # thumb: CMC flex/abd, MCP, IP
    [[-25, 90], [-12, 25], [0, 105], [-5, 85]],        # index: MCP flex/abd, PIP, DIP
    [[-25, 90], [-15, 15], [0, 110], [-5, 85]],        # middle
    [[-25, 90], [-20, 12], [0, 110], [-5, 85]],        # ring
    [[-25, 90], [-32, 12], [0, 105], [-5, 85]],        # little
], dtype=np.float64)
#: (20,) lower and upper joint limits in radians.
POSE_LOW = np.deg2rad(_LIMITS_DEG[..., 0].reshape(-1))
POSE_HIGH = np.deg2rad(_LIMITS_DEG[..., 1].reshape(-1))

# Rest geometry of an average adult right hand (metres, hand frame).
_BASE = np.array([
    [0.030, 0.024, 0.008],     # thumb CMC
    [0.027, 0.081, 0.000],     # index MCP
    [0.004, 0.084, 0.000],     # middle MCP
    [-0.018, 0.079, 0.002],    # ring MCP
    [-0.037, 0.070, 0.005],    # little MCP
])
_LENGTHS = np.array([          # segments after the base joint: (proximal, middle, distal-to-tip)
    [0.043, 0.032, 0.028],     # thumb: metacarpal, proximal phalanx, distal phalanx
    [0.041, 0.024, 0.021],
    [0.046, 0.028, 0.022],
    [0.043, 0.027, 0.022],
    [0.034, 0.020, 0.019],
])
_RADII = np.array([            # half-thickness at (base, 2nd, 3rd, tip) joints of each digit
    [0.0130, 0.0110, 0.0100, 0.0086],
    [0.0100, 0.0092, 0.0080, 0.0068],
    [0.0102, 0.0094, 0.0082, 0.0070],
    [0.0096, 0.0089, 0.0078, 0.0066],
    [0.0086, 0.0078, 0.0069, 0.0058],
])
WRIST_RADIUS = 0.024
# Rest direction of each finger: fan angle about the palmar axis (radial > 0) and a roll about its own
# axis so that flexed fingers converge towards the thenar, as real fists do.
_FAN = np.deg2rad([0.0, 6.0, 0.0, -6.0, -13.0])
_ROLL = np.deg2rad([0.0, -4.0, 2.0, 7.0, 12.0])
# Thumb: rest direction of the metacarpal and the side its pad faces (before orthonormalisation).
_THUMB_DIST = np.array([0.50, 0.80, 0.32])
_THUMB_PAD = np.array([-0.62, 0.05, 0.80])
_THUMB_TWIST = 0.45            # pronation of the thumb per radian of CMC abduction (opposition)


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _orthonormal_frame(dist: np.ndarray, palmar: np.ndarray) -> np.ndarray:
    """(3, 3) frame with columns (lateral, distal, palmar), right-handed: lateral = distal x palmar."""
    d = dist / np.linalg.norm(dist)
    p = palmar - d * (palmar @ d)
    p = p / np.linalg.norm(p)
    return np.stack([np.cross(d, p), d, p], axis=1)


@dataclass(frozen=True)
class HandShape:
    """One person's right hand at rest, in the hand frame (metres).

    base: (5, 3) base-joint positions (thumb CMC, finger MCPs).  base_frames: (5, 3, 3) rest frames of the
    first movable segment, columns (lateral, distal, palmar).  lengths: (5, 3) segment lengths.
    radii: (21,) half-thickness of the hand at each joint (for rendering and visibility).
    """
    base: np.ndarray
    base_frames: np.ndarray
    lengths: np.ndarray
    radii: np.ndarray

    @property
    def scale(self) -> float:
        """Wrist to middle-finger MCP distance (metres): the hand's size."""
        return float(np.linalg.norm(self.base[2]))


def _rest_frames() -> np.ndarray:
    frames = np.empty((NUM_FINGERS, 3, 3))
    frames[0] = _orthonormal_frame(_THUMB_DIST, _THUMB_PAD)
    for f in range(1, NUM_FINGERS):
        frames[f] = rot_z(-_FAN[f]) @ rot_y(_ROLL[f])
    return frames


def mean_shape() -> HandShape:
    """The average adult right hand."""
    radii = np.concatenate([[WRIST_RADIUS], _RADII.reshape(-1)])
    return HandShape(_BASE.copy(), _rest_frames(), _LENGTHS.copy(), radii)


def sample_shape(rng: np.random.Generator) -> HandShape:
    """A random adult's right hand: overall size, palm width, finger lengths and thickness vary.

    Factors are drawn around 1 (size sd 7%, palm width sd 5%, each finger's length sd 4%, thickness sd 8%)
    and clipped so every hand stays anatomically plausible.
    """
    size = float(np.clip(rng.normal(1.0, 0.07), 0.84, 1.16))
    width = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    finger = np.clip(rng.normal(1.0, 0.04, size=(NUM_FINGERS, 1)), 0.9, 1.1)
    segment = np.clip(rng.normal(1.0, 0.02, size=(NUM_FINGERS, 3)), 0.95, 1.05)
    thick = float(np.clip(rng.normal(1.0, 0.08), 0.82, 1.2))
    base = _BASE * np.array([width, 1.0, 1.0]) * size
    lengths = _LENGTHS * finger * segment * size
    radii = np.concatenate([[WRIST_RADIUS], _RADII.reshape(-1)]) * size * thick
    return HandShape(base, _rest_frames(), lengths, radii)


def forward_kinematics(pose: np.ndarray, shape: HandShape) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions and segment orientations of a right hand in its own frame.

    pose: (20,) radians (module layout).  Returns joints (21, 3) metres in SPEC order, and frames
    (21, 3, 3): frames[j] is the orientation (columns lateral, distal, palmar) of the segment ending at
    joint j (frames[0] is the palm frame, the identity).
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(NUM_FINGERS, 4)
    joints = np.zeros((21, 3))
    frames = np.empty((21, 3, 3))
    frames[0] = np.eye(3)
    for f in range(NUM_FINGERS):
        base_flex, abd, mid_flex, tip_flex = pose[f]
        j = 1 + 4 * f
        joints[j] = shape.base[f]
        rest = shape.base_frames[f]
        frames[j] = rest if f else np.eye(3)
        r = rest @ rot_z(-abd) @ rot_x(base_flex)
        if f == 0:
            r = r @ rot_y(_THUMB_TWIST * abd)
        for k, flex in enumerate((None, mid_flex, tip_flex)):
            if flex is not None:
                r = r @ rot_x(flex)
            joints[j + k + 1] = joints[j + k] + r[:, 1] * shape.lengths[f, k]
            frames[j + k + 1] = r
    return joints, frames


def clip_pose(pose: np.ndarray) -> np.ndarray:
    """Clamp a (..., 20) pose into the joint limits."""
    return np.clip(pose, POSE_LOW, POSE_HIGH)


def within_limits(pose: np.ndarray, atol: float = 1e-9) -> bool:
    return bool(np.all(pose >= POSE_LOW - atol) and np.all(pose <= POSE_HIGH + atol))


# --- key poses ------------------------------------------------------------------------------------
# Common hand shapes (degrees; digit rows thumb..little, columns base_flex, base_abd, mid_flex, tip_flex).
_CURL = [85, 0, 100, 60]
_TEMPLATES_DEG = {
    "open": [[0, 10, 5, 5], [0, 5, 0, 0], [0, 0, 0, 0], [0, -4, 0, 0], [0, -8, 0, 0]],
    "spread": [[-10, 40, 0, 0], [0, 20, 0, 0], [0, 0, 0, 0], [0, -15, 0, 0], [0, -28, 0, 0]],
    "relaxed": [[10, 15, 15, 20], [15, 3, 25, 15], [20, 0, 30, 18], [25, -3, 35, 20], [30, -6, 40, 20]],
    "fist": [[40, 10, 40, 45], _CURL, [88, 0, 105, 60], [88, 0, 105, 60], [85, 0, 100, 55]],
    "point": [[40, 10, 40, 40], [0, 0, 0, 0], _CURL, _CURL, [82, 0, 100, 55]],
    "peace": [[40, 15, 35, 40], [0, 14, 0, 0], [0, -12, 0, 0], _CURL, [85, 0, 100, 55]],
    "thumbs_up": [[-15, 35, -5, -10], _CURL, _CURL, _CURL, _CURL],
    "ok": [[30, 35, 25, 30], [50, 5, 55, 40], [5, 0, 5, 5], [8, -8, 8, 5], [10, -15, 10, 5]],
    "claw": [[20, 30, 40, 50], [20, 8, 85, 70], [20, 0, 90, 70], [20, -6, 90, 70], [20, -12, 85, 65]],
    "grasp": [[25, 40, 20, 20], [45, 0, 50, 30], [50, 0, 55, 30], [55, -3, 55, 30], [60, -6, 55, 30]],
    "three": [[40, 10, 40, 40], [0, 10, 0, 0], [0, 0, 0, 0], [0, -8, 0, 0], [85, 0, 100, 55]],
    "rock": [[0, 30, 0, 0], [0, 10, 0, 0], _CURL, _CURL, [0, -18, 0, 0]],
    "pinch": [[30, 40, 25, 30], [40, 0, 45, 35], [35, 0, 50, 30], [40, -4, 55, 30], [45, -8, 55, 30]],
    "call": [[-10, 45, -5, -5], _CURL, _CURL, _CURL, [0, -20, 0, 0]],
}
TEMPLATE_NAMES = tuple(_TEMPLATES_DEG)
#: (T, 20) template poses in radians, clipped into the limits.
TEMPLATES = clip_pose(np.deg2rad(np.array([np.reshape(v, -1) for v in _TEMPLATES_DEG.values()], dtype=np.float64)))


def sample_pose(rng: np.random.Generator, noise_deg: float = 7.0) -> np.ndarray:
    """A random natural pose (20,): a template, half the time blended with another, plus per-joint noise."""
    a = TEMPLATES[rng.integers(len(TEMPLATES))]
    if rng.random() < 0.5:
        b = TEMPLATES[rng.integers(len(TEMPLATES))]
        a = a + rng.uniform(0.0, 0.5) * (b - a)
    return clip_pose(a + np.deg2rad(rng.normal(0.0, noise_deg, size=POSE_DIM)))


# --- global placement -----------------------------------------------------------------------------
#: Hand frame -> camera frame (x right, y down, z forward) for a palm facing the camera, fingers up.
PALM_TO_CAMERA = np.diag([1.0, -1.0, -1.0])
MIRROR = np.diag([-1.0, 1.0, 1.0])


def view_rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """(3, 3) hand-frame -> camera rotation from view angles (radians).

    yaw turns the hand about the camera's vertical axis (0 = palm towards the camera, pi = back of the
    hand), pitch tilts the fingers towards / away from the camera, roll spins the hand in the image plane.
    """
    return rot_z(roll) @ rot_x(pitch) @ rot_y(yaw) @ PALM_TO_CAMERA


def sample_view(rng: np.random.Generator) -> np.ndarray:
    """(3,) roll, pitch, yaw (radians): any side of the hand, mostly fingers up and tilted away."""
    if rng.random() < 0.2:
        roll = rng.uniform(-np.pi, np.pi)
    else:
        roll = rng.uniform(-0.6 * np.pi, 0.6 * np.pi)
    # Mostly fingers away from the camera, forearm towards it (an egocentric camera looks along the arm).
    pitch = float(np.clip(rng.normal(-np.deg2rad(12), np.deg2rad(20)), -np.deg2rad(45), np.deg2rad(40)))
    yaw = rng.uniform(-np.pi, np.pi)
    return np.array([roll, pitch, yaw])


def place_hand(joints: np.ndarray, frames: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
               left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hand-frame joints (21, 3) and frames (21, 3, 3) -> camera space, mirrored first for a left hand."""
    m = rotation @ MIRROR if left else rotation
    return joints @ m.T + translation, np.einsum("ab,jbc->jac", m, frames)
