"""Hands as 3D primitives: per-video appearance, the capsules and triangles of a posed hand, occluders,
ground-truth boxes and visibility, and the camera's response.

A hand is a set of tapered capsules (forearm, palm edges, thenar, phalanges, nails) plus triangles (the
palm and forearm faces turned to the camera, the webs between digits) that fill the gaps between them;
``raster.rasterize`` draws them with a depth buffer. Colours are sRGB in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simhand_ray.synthetic.hand_model import HandShape
from simhand_ray.synthetic.raster import OCCLUDER, Z_NEAR, Dome, Primitives, Raster, material, project

ARM_NEAR = 0.15     # metres: arms are cut off before they come this near the camera (no giant sleeves)


# --- appearance -----------------------------------------------------------------------------------
_SKIN_TONES = np.array([   # sRGB in [0, 1], light to dark
    [0.96, 0.80, 0.69], [0.92, 0.74, 0.60], [0.86, 0.65, 0.52], [0.77, 0.56, 0.42],
    [0.64, 0.45, 0.32], [0.48, 0.32, 0.22], [0.35, 0.23, 0.16],
])


@dataclass(frozen=True)
class Appearance:
    """How one video looks: skin, clothing, light and camera response (all colours sRGB in [0, 1])."""
    skin: np.ndarray              # (3,) back of the hand
    palm: np.ndarray              # (3,) palm side (lighter, pinker)
    nail: np.ndarray              # (3,)
    sleeve: np.ndarray | None     # (3,) or None for a bare forearm
    sleeve_start: float           # metres from the wrist where the sleeve begins
    light_dir: np.ndarray         # (3,) unit, from the surface towards the light (camera frame)
    light_color: np.ndarray       # (3,)
    ambient: float
    blur_sigma: float             # pixels, camera defocus
    noise_sigma: float            # grey levels (0..255) of sensor noise
    gain: float
    white_balance: np.ndarray     # (3,)
    gamma: float


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """A random skin tone, sleeve, light and camera response for one video."""
    i = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(i)
    skin = _SKIN_TONES[lo] + (i - lo) * (_SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[lo])
    skin = np.clip(skin * rng.normal(1.0, 0.03, 3), 0.05, 1.0)
    darkness = i / (len(_SKIN_TONES) - 1)
    palm = skin + (0.25 + 0.35 * darkness) * (np.array([0.95, 0.74, 0.64]) - skin)
    nail = skin + 0.45 * (np.array([0.97, 0.84, 0.82]) - skin)
    sleeve = None
    if rng.random() < 0.6:
        sleeve = rng.uniform(0.05, 0.9, 3) * rng.uniform(0.3, 1.0)
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.9, 0.3), -1.0])
    warm = rng.uniform(-0.08, 0.08)
    return Appearance(
        skin=skin, palm=palm, nail=nail, sleeve=sleeve, sleeve_start=float(rng.uniform(0.03, 0.10)),
        light_dir=light / np.linalg.norm(light), light_color=np.array([1.0 + warm, 1.0, 1.0 - warm]),
        ambient=float(rng.uniform(0.25, 0.5)), blur_sigma=float(rng.choice([0.0, rng.uniform(0.3, 1.2)])),
        noise_sigma=float(rng.uniform(0.5, 4.0)), gain=float(rng.uniform(0.8, 1.08)),
        white_balance=rng.normal(1.0, 0.04, 3), gamma=float(rng.uniform(0.9, 1.15)),
    )


# --- primitives -----------------------------------------------------------------------------------
def hand_primitives(joints: np.ndarray, frames: np.ndarray, shape: HandShape, look: Appearance,
                    owner: int) -> Primitives:
    """The capsules and triangles of one posed hand (+ arm) in camera space.

    joints: (21, 3) and frames: (21, 3, 3) from ``hand_model.place_hand``; the palm frame frames[0] has
    columns (lateral, distal, palmar) in camera space (lateral flipped for a left hand).
    """
    prim = Primitives()
    _arm(prim, joints, frames, shape, look, owner)
    _palm(prim, joints, frames, shape, look, owner)
    _digits(prim, joints, frames, shape, look, owner)
    return prim


def _hand_point(joints: np.ndarray, frames: np.ndarray, shape: HandShape):
    """x, y, z (metres, hand frame of the average hand) -> camera space, scaled to this person's hand."""
    s = shape.scale / 0.084

    def at(x: float, y: float, z: float = 0.0) -> np.ndarray:
        return joints[0] + frames[0] @ (np.array([x, y, z]) * s)

    return at


def _arm(prim: Primitives, joints, frames, shape: HandShape, look: Appearance, owner: int) -> None:
    """Forearm (to the elbow) and upper arm: rounded slabs wider than thick, long enough to leave the
    frame but stopped before they come nearer the camera than ARM_NEAR; optionally a round sleeve over
    them from a few centimetres above the wrist, a few millimetres wider than the arm everywhere."""
    s = shape.scale / 0.084
    wrist, palm_frame = joints[0], frames[0]
    proximal = -palm_frame[:, 1]
    length = 0.55 * s
    if wrist[2] + proximal[2] * length < ARM_NEAR:
        length = max((ARM_NEAR - wrist[2]) / min(proximal[2], -1e-9), 0.06 * s)
    elbow = min(0.25 * s, length)
    arm = material(look.skin, look.palm, palm_frame[:, 2], 0.05, owner)
    # half-width between the edge capsules and their radius, wrist and elbow: 5.4 x 3.4 cm at the wrist,
    # 8.4 x 6 cm below the elbow
    w0, w1, t0, t1 = 0.010 * s, 0.012 * s, 0.017 * s, 0.030 * s
    f = elbow / (0.25 * s)
    _slab(prim, wrist, wrist + proximal * elbow, palm_frame, w0, w0 + (w1 - w0) * f, t0, t0 + (t1 - t0) * f, arm)
    if length > elbow:
        _slab(prim, wrist + proximal * elbow, wrist + proximal * length, palm_frame, w1, 0.013 * s, t1, 0.033 * s, arm)
    if look.sleeve is None or look.sleeve_start >= length:
        return
    cloth = material(look.sleeve, spec=0.02, owner=owner)
    a0, a1 = wrist + proximal * look.sleeve_start, wrist + proximal * elbow
    if look.sleeve_start < elbow:
        prim.capsule(a0, a1, 0.037 * s, 0.049 * s, cloth, (False, length > elbow))
        a0 = a1
    if length > elbow:
        prim.capsule(a0, wrist + proximal * length, 0.049 * s, 0.057 * s, cloth, (look.sleeve_start < elbow, False))


def _palm(prim: Primitives, joints, frames, shape: HandShape, look: Appearance, owner: int) -> None:
    """The palm as a slab: a fan of triangles on the face turned to the camera (gently domed), rounded
    capsule edges around its rim (radial wrist -> MCPs -> ulnar wrist), the hypothenar and thenar mounds,
    and webs of skin between the proximal phalanges and between thumb and index."""
    at = _hand_point(joints, frames, shape)
    s = shape.scale / 0.084
    r = shape.radii
    palmar = frames[0][:, 2]
    half = 1.2 * r[9]           # palm half-thickness, in proportion to the fingers
    skin = material(look.skin, look.palm, palmar, 0.06, owner)
    rim = [at(0.020, 0.004), at(0.027, 0.026), at(0.027, 0.050), joints[5], joints[9], joints[13], joints[17],
           at(-0.034, 0.045), at(-0.024, 0.006)]
    centre = at(-0.002, 0.046)
    sign = _facing(palmar, centre)
    off = palmar * (sign * half)
    face = material(look.skin, look.palm, palmar, 0.05, owner, dome=Dome(centre + off, 0.045 * s, palmar * sign))
    for a, b in zip(rim, rim[1:] + rim[:1]):
        prim.triangle(centre + off, a + off, b + off, face)
        prim.capsule(a, b, 0.96 * half, 0.96 * half, skin)
    prim.capsule(at(-0.022, 0.020, 0.003), at(-0.030, 0.055, 0.003), 1.08 * half, 0.95 * half, skin)
    prim.capsule(at(0.022, 0.020, -0.002), joints[2], 1.3 * half, 0.9 * r[2], skin)
    web = material(look.skin, look.palm, palmar, 0.04, owner)
    for f in (5, 9, 13):        # a third of the way up the neighbouring proximal phalanges
        a, b = joints[f], joints[f + 4]
        a2 = a + 0.38 * (joints[f + 1] - a)
        b2 = b + 0.38 * (joints[f + 5] - b)
        prim.triangle(a, b, a2, web)
        prim.triangle(b, b2, a2, web)
        prim.capsule(a2, b2, 0.55 * r[f + 1], 0.55 * r[f + 5], web)
    web_index = joints[5] + 0.4 * (rim[2] - joints[5])
    web_thumb = joints[2] + 0.3 * (joints[3] - joints[2])
    prim.triangle(joints[1], web_thumb, web_index, skin)
    prim.triangle(joints[1], web_index, rim[1], skin)
    prim.capsule(web_thumb, web_index, 0.5 * r[2], 0.6 * r[5], skin)


def _digits(prim: Primitives, joints, frames, shape: HandShape, look: Appearance, owner: int) -> None:
    """Three capsules per digit, shaded as one tube across the joints; the last one ends one radius short
    so that its surface meets the tip keypoint. A nail is a thin capsule on the back of the distal
    segment, poking just above its surface (so the depth test shows it only from the dorsal side)."""
    r = shape.radii
    for f in range(5):
        j = 1 + 4 * f
        for k in range(3):
            a, b = joints[j + k], joints[j + k + 1]
            rb = r[j + k + 1]
            if k == 2:
                b = b - (b - a) / max(np.linalg.norm(b - a), 1e-9) * rb
            mat = material(look.skin, look.palm, frames[j + k + 1][:, 2], 0.06, owner)
            prim.capsule(a, b, r[j + k], rb, mat, joined=(k > 0 or f > 0, k < 2))
        a, tip = joints[j + 2], joints[j + 3]
        axis = (tip - a) / max(np.linalg.norm(tip - a), 1e-9)
        rt = r[j + 3]
        off = -frames[j + 3][:, 2] * (0.5 * rt + 0.0007)
        prim.capsule(a + 0.45 * (tip - a) + off, tip - axis * 1.15 * rt + off, 0.5 * rt, 0.5 * rt,
                     material(look.nail, spec=0.25, owner=owner))


def _slab(prim: Primitives, a: np.ndarray, b: np.ndarray, frame: np.ndarray, half_w0: float, half_w1: float,
          r0: float, r1: float, mat) -> None:
    """A rounded slab from a to b (a limb wider than it is thick): two edge capsules (radii r0 -> r1),
    half_w0 -> half_w1 to either side along frame's lateral axis, and the face turned to the camera. The
    face is flat across (its normal meets the capsules' tops without a crease) and a little proud of the
    capsules, hiding where their approximate screen-space surfaces would poke through it."""
    lat, normal = frame[:, 0], frame[:, 2]
    ends = [a + lat * half_w0, a - lat * half_w0, b - lat * half_w1, b + lat * half_w1]
    prim.capsule(ends[0], ends[3], r0, r1, mat)
    prim.capsule(ends[1], ends[2], r0, r1, mat)
    side = _facing(normal, 0.5 * (a + b))
    quad = [e + normal * (side * 1.06 * q) for e, q in zip(ends, (r0, r0, r1, r1))]
    face = material(mat.albedo, mat.palm, mat.palmar, mat.spec, mat.owner, dome=Dome(a, 1.0, normal * side, 0.0))
    prim.triangle(quad[0], quad[1], quad[2], face)
    prim.triangle(quad[0], quad[2], quad[3], face)


def _facing(normal: np.ndarray, point: np.ndarray) -> float:
    """+1 if the side of a slab that ``normal`` points out of faces a camera at the origin, else -1 (only
    that face is drawn; the other is hidden behind the slab anyway)."""
    return -1.0 if normal @ point > 0 else 1.0


def occluder_primitives(p0: np.ndarray, p1: np.ndarray, radius: float, color: np.ndarray) -> Primitives:
    """An object in front of the hand: one capsule (a pen, a mug, another arm), owner OCCLUDER."""
    prim = Primitives()
    prim.capsule(p0, p1, radius, radius, material(color, spec=0.2, owner=OCCLUDER))
    return prim


def visibility(raster: Raster | None, joints: np.ndarray, frames: np.ndarray, radii: np.ndarray, K: np.ndarray,
               owner: int, width: int, height: int) -> np.ndarray:
    """(21,) 1.0 where a joint is inside the image and not hidden by anything nearer than its own surface.

    A tip is tested at the centre of its end sphere (the tip point itself lies on the silhouette); the
    depth test allows 1.6 radii + 3 mm for the joint's own flesh in front of it.
    """
    points = joints.copy()
    for tip in (4, 8, 12, 16, 20):
        points[tip] = joints[tip] - frames[tip][:, 1] * radii[tip]
    uv = project(points, K)
    kp = project(joints, K)
    inside = np.ones(len(joints), bool)
    for p in (uv, kp):       # the keypoint itself and its test point both inside the image
        inside &= (p[:, 0] >= 0) & (p[:, 0] < width) & (p[:, 1] >= 0) & (p[:, 1] < height)
    inside &= points[:, 2] > Z_NEAR
    if raster is None:
        return np.zeros(len(joints), np.float32)
    depth, who = raster.sample(uv)
    seen = (who == owner) & (depth >= points[:, 2] - 1.6 * radii - 0.003)
    return (inside & seen).astype(np.float32)


def hand_box(joints: np.ndarray, radii: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """(4,) x0, y0, x1, y1: the projected extent of the hand (joints padded by their radii, no forearm),
    clipped to the image."""
    uv = project(joints, K)
    rho = float(K[0, 0]) * radii / np.maximum(joints[:, 2], Z_NEAR)
    box = np.array([np.min(uv[:, 0] - rho), np.min(uv[:, 1] - rho), np.max(uv[:, 0] + rho), np.max(uv[:, 1] + rho)])
    return np.clip(box, [0, 0, 0, 0], [width, height, width, height])


def camera_lut(look: Appearance) -> np.ndarray:
    """(1, 256, 3) uint8 table of the video's colour response: white balance x gain, then gamma."""
    v = np.arange(256, dtype=np.float64)[:, None] / 255.0
    out = np.clip(v * (look.white_balance * look.gain)[None, :], 0.0, 1.0) ** look.gamma
    return np.round(out * 255.0).astype(np.uint8)[None]


def apply_camera(image: np.ndarray, look: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Float RGB (H, W, 3) in [0, 1] -> uint8 through the video's camera: colour response, defocus blur
    and luminance sensor noise (drawn from ``rng``)."""
    img = np.clip(image * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    img = cv2.LUT(img, camera_lut(look))
    if look.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), look.blur_sigma)
    noise = np.float32(look.noise_sigma) * rng.standard_normal(img.shape[:2], dtype=np.float32)
    return np.clip(img + noise[..., None], 0, 255).astype(np.uint8)
