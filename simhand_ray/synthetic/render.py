"""Draw posed hands as shaded 3D primitives into an image, with a depth buffer so occlusion is right.

A hand is a set of tapered capsules (forearm, metacarpals, knuckle line, phalanges, nails) plus a few
triangles (palm and thumb web) that fill the gaps between them. Every primitive is rasterised per pixel
over its own bounding box: the front-surface depth and normal of a capsule follow from the pixel's
distance to the projected axis, so overlapping parts intersect smoothly and the nearest surface wins
(a z-buffer; stricter than drawing back to front). Shading is wrapped Lambert + a little Blinn specular,
palms tinted lighter than backs, with mild darkening by depth and at silhouettes so overlapping fingers
stay distinguishable. Rendering is supersampled inside the hand's region, then composited over the
background with coverage as alpha.

Coordinates: camera space in metres (x right, y down, z forward); image coordinates are continuous
pixels with pixel centres at i + 0.5 (so K's principal point of a W x H image centred is (W/2, H/2)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from simhand_ray.synthetic.hand_model import HandShape

Z_NEAR = 0.05
OCCLUDER = -1          # owner id of occluders; hands are 0, 1, ...
BACKGROUND = -2


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
        noise_sigma=float(rng.uniform(0.5, 4.0)), gain=float(rng.uniform(0.8, 1.15)),
        white_balance=rng.normal(1.0, 0.04, 3), gamma=float(rng.uniform(0.85, 1.15)),
    )


# --- primitives -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Material:
    """Surface of one primitive: albedo (3,), palm-side albedo (3,) blended in where the normal faces
    ``palmar`` (3,) (zeros: no palm tint), specular strength, owner (hand index or OCCLUDER), and for
    triangles an optional dome (centre (3,), radius, normal (3,)) that replaces their normal by one that
    bends outwards from the centre like a cushion (so a fan of triangles shades as one smooth surface)."""
    albedo: np.ndarray
    palm: np.ndarray
    palmar: np.ndarray
    spec: float
    owner: int
    dome: tuple | None = None


def _material(albedo, palm=None, palmar=None, spec: float = 0.06, owner: int = 0, dome=None) -> Material:
    palm = albedo if palm is None else palm
    palmar = np.zeros(3) if palmar is None else palmar
    return Material(np.asarray(albedo, np.float32), np.asarray(palm, np.float32), np.asarray(palmar, np.float32),
                    float(spec), int(owner), dome)


@dataclass
class Capsule:
    """A tapered capsule: axis p0 -> p1 (camera space, metres), radii r0, r1; ``joined`` marks ends that
    continue into another capsule of the same chain (shaded as a continuing tube, not a sphere)."""
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    material: Material
    joined: tuple[bool, bool] = (False, False)


@dataclass
class Triangle:
    vertices: np.ndarray      # (3, 3) camera space
    material: Material


@dataclass
class Primitives:
    """The capsules and triangles of a scene (hands, occluders)."""
    capsules: list = field(default_factory=list)
    triangles: list = field(default_factory=list)

    def capsule(self, p0, p1, r0, r1, material: Material, joined: tuple[bool, bool] = (False, False)) -> None:
        self.capsules.append(Capsule(np.asarray(p0, float), np.asarray(p1, float), float(r0), float(r1),
                                     material, joined))

    def triangle(self, a, b, c, material: Material) -> None:
        self.triangles.append(Triangle(np.stack([a, b, c]).astype(float), material))

    def extend(self, other: "Primitives") -> None:
        self.capsules.extend(other.capsules)
        self.triangles.extend(other.triangles)


def hand_primitives(joints: np.ndarray, frames: np.ndarray, shape: HandShape, look: Appearance,
                    owner: int) -> Primitives:
    """The capsules and triangles of one posed hand (+ forearm) in camera space.

    joints: (21, 3) and frames: (21, 3, 3) from ``hand_model.place_hand``; the palm frame frames[0] has
    columns (lateral, distal, palmar) in camera space (lateral flipped for a left hand). The palm is a
    slab (palmar and dorsal faces with domed normals) with rounded capsule edges; webs of skin join the
    proximal phalanges and the thumb; digits are chains of capsules whose shading runs on smoothly
    across the joints.
    """
    prim = Primitives()
    palm_frame = frames[0]
    palmar = palm_frame[:, 2]
    s = shape.scale / 0.084
    r = shape.radii
    wrist = joints[0]
    half = 1.17 * r[9]          # palm half-thickness, in proportion to the fingers

    def at(x, y, z=0.0):
        return wrist + palm_frame @ (np.array([x, y, z]) * s)

    skin = _material(look.skin, look.palm, palmar, 0.06, owner)
    # Forearm: a rounded slab (two edge capsules + the face turned to the camera) thickening from the
    # wrist up, and optionally a sleeve over it a few centimetres up from the wrist.
    arm = _material(look.skin, look.palm, palmar, 0.05, owner)
    arm_r0, arm_r1, arm_w = 1.05 * half, 0.75 * r[0], 0.45 * r[0]
    ends = [at(arm_w / s, 0.0), at(-arm_w / s, 0.0), at(-1.3 * arm_w / s, -0.24), at(1.3 * arm_w / s, -0.24)]
    prim.capsule(ends[0], ends[3], arm_r0, arm_r1, arm)
    prim.capsule(ends[1], ends[2], arm_r0, arm_r1, arm)
    rad = [arm_r0, arm_r0, arm_r1, arm_r1]
    toward = _facing(palmar, at(0.0, -0.06))
    quad = [e + palmar * (toward * q) for e, q in zip(ends, rad)]
    arm_face = _material(look.skin, look.palm, palmar, 0.05, owner,
                         dome=(at(0.0, -0.12) + palmar * toward * arm_r1, 2.0 * arm_w, palmar * toward))
    prim.triangle(quad[0], quad[1], quad[2], arm_face)
    prim.triangle(quad[0], quad[2], quad[3], arm_face)
    if look.sleeve is not None:
        prim.capsule(at(0.0, -look.sleeve_start / s), at(0.0, -0.24), 1.3 * r[0], 1.5 * r[0],
                     _material(look.sleeve, spec=0.02, owner=owner))
    # Palm slab: a fan of triangles on each face; rim points run radial wrist -> MCPs -> ulnar wrist.
    rim = [at(0.020, 0.004), at(0.027, 0.026), at(0.027, 0.050), joints[5], joints[9], joints[13], joints[17],
           at(-0.034, 0.045), at(-0.024, 0.006)]
    centre = at(-0.002, 0.046)
    sign = _facing(palmar, centre)
    off = palmar * (sign * half)
    face = _material(look.skin, look.palm, palmar, 0.05, owner, dome=(centre + off, 0.045 * s, palmar * sign))
    for a, b in zip(rim[:-1], rim[1:]):
        prim.triangle(centre + off, a + off, b + off, face)
    prim.triangle(centre + off, rim[-1] + off, rim[0] + off, face)
    # Rounded palm edges: radial border, ulnar border (hypothenar), heel, and the knuckles.
    edge_r = 0.96 * half
    for a, b in zip(rim[:-1], rim[1:]):
        prim.capsule(a, b, edge_r, edge_r, skin)
    prim.capsule(rim[-1], rim[0], edge_r, edge_r, skin)
    prim.capsule(at(-0.022, 0.020, 0.003), at(-0.030, 0.055, 0.003), 1.08 * half, 0.95 * half, skin)
    # Thenar eminence: the fleshy mound over the thumb metacarpal.
    prim.capsule(at(0.022, 0.020, -0.002), joints[2], 1.3 * half, 0.9 * r[2], skin)
    # Webs: skin joining neighbouring proximal phalanges a third of the way up, and the thumb to the index.
    for f in (5, 9, 13):
        a, b = joints[f], joints[f + 4]
        a2 = a + 0.38 * (joints[f + 1] - a)
        b2 = b + 0.38 * (joints[f + 5] - b)
        web = _material(look.skin, look.palm, palmar, 0.04, owner)
        prim.triangle(a, b, a2, web)
        prim.triangle(b, b2, a2, web)
        prim.capsule(a2, b2, 0.55 * r[f + 1], 0.55 * r[f + 5], web)
    web_index = joints[5] + 0.4 * (rim[2] - joints[5])
    web_thumb = joints[2] + 0.3 * (joints[3] - joints[2])
    prim.triangle(joints[1], web_thumb, web_index, skin)
    prim.triangle(joints[1], web_index, rim[1], skin)
    prim.capsule(web_thumb, web_index, 0.5 * r[2], 0.6 * r[5], skin)
    # Digits: three segments each; the last capsule ends one radius short so its surface meets the tip.
    for f in range(5):
        j = 1 + 4 * f
        for k in range(3):
            a, b = joints[j + k], joints[j + k + 1]
            rb = r[j + k + 1]
            if k == 2:
                axis = (b - a) / max(np.linalg.norm(b - a), 1e-9)
                b = b - axis * rb
            mat = _material(look.skin, look.palm, frames[j + k + 1][:, 2], 0.06, owner)
            prim.capsule(a, b, r[j + k], rb, mat, joined=(k > 0 or f > 0, k < 2))
        # Nail: a thin capsule on the back of the distal segment, poking just above its surface.
        a, tip = joints[j + 2], joints[j + 3]
        axis = (tip - a) / max(np.linalg.norm(tip - a), 1e-9)
        rt = r[j + 3]
        dorsal = -frames[j + 3][:, 2]
        off = dorsal * (0.5 * rt + 0.0007)
        prim.capsule(a + 0.45 * (tip - a) + off, tip - axis * 1.15 * rt + off, 0.5 * rt, 0.5 * rt,
                     _material(look.nail, spec=0.25, owner=owner))
    return prim


def _facing(normal: np.ndarray, point: np.ndarray) -> float:
    """+1 if the side of a slab that ``normal`` points out of faces a camera at the origin, else -1 (only
    that face is drawn; the other is hidden behind the slab anyway)."""
    return -1.0 if normal @ point > 0 else 1.0


def occluder_primitives(p0: np.ndarray, p1: np.ndarray, radius: float, color: np.ndarray) -> Primitives:
    """An object in front of the hand: one capsule (a pen, a mug, another arm), owner OCCLUDER."""
    prim = Primitives()
    prim.capsule(p0, p1, radius, radius, _material(color, spec=0.2, owner=OCCLUDER))
    return prim


# --- rasterisation --------------------------------------------------------------------------------
@dataclass
class Raster:
    """A rendered region of interest at ``scale`` x supersampling.

    color: (h, w, 3) float32 shaded colour, depth: (h, w) front-surface z (inf where empty), owner:
    (h, w) int16 (BACKGROUND where empty); the region's top-left image pixel is (x0, y0).
    """
    color: np.ndarray
    depth: np.ndarray
    owner: np.ndarray
    x0: int
    y0: int
    scale: int

    def sample(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth and owner at continuous image points uv (N, 2); outside the region: (inf, BACKGROUND)."""
        j = np.floor((uv[:, 0] - self.x0) * self.scale).astype(int)
        i = np.floor((uv[:, 1] - self.y0) * self.scale).astype(int)
        h, w = self.depth.shape
        ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        depth = np.full(len(uv), np.inf, np.float32)
        owner = np.full(len(uv), BACKGROUND, np.int16)
        depth[ok] = self.depth[i[ok], j[ok]]
        owner[ok] = self.owner[i[ok], j[ok]]
        return depth, owner


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-space points (..., 3) -> continuous pixel coordinates (..., 2)."""
    p = points @ np.asarray(K, dtype=np.float64).T
    return p[..., :2] / p[..., 2:3]


def _clip_near(p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if p0[2] < Z_NEAR and p1[2] < Z_NEAR:
        return None
    if p0[2] < Z_NEAR:
        p0 = p1 + (Z_NEAR - p1[2]) / (p0[2] - p1[2]) * (p0 - p1)
    elif p1[2] < Z_NEAR:
        p1 = p0 + (Z_NEAR - p0[2]) / (p1[2] - p0[2]) * (p1 - p0)
    return p0, p1


def primitive_bounds(prim: Primitives, K: np.ndarray) -> np.ndarray | None:
    """(4,) x0, y0, x1, y1 image extent of all primitives (None when nothing is in front of the camera)."""
    f = float(K[0, 0])
    boxes = []
    for c in prim.capsules:
        seg = _clip_near(c.p0, c.p1)
        if seg is None:
            continue
        uv = project(np.stack(seg), K)
        rho = f * np.array([c.r0, c.r1]) / np.array([seg[0][2], seg[1][2]])
        boxes.append([np.min(uv[:, 0] - rho), np.min(uv[:, 1] - rho), np.max(uv[:, 0] + rho), np.max(uv[:, 1] + rho)])
    for t in prim.triangles:
        if np.any(t.vertices[:, 2] < Z_NEAR):
            continue
        uv = project(t.vertices, K)
        boxes.append([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    if not boxes:
        return None
    b = np.array(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


@dataclass(frozen=True)
class Light:
    direction: np.ndarray   # (3,) unit, towards the light
    color: np.ndarray       # (3,)
    ambient: float
    z_ref: float            # depth of the nearest hand part, for the depth cue


_WARM = np.array([1.0, 0.88, 0.82], np.float32)


def _shade(n: np.ndarray, z: np.ndarray, edge: np.ndarray, m: Material, light: Light) -> np.ndarray:
    """Colour (P, 3) of surface points with unit normals n (P, 3), depths z (P,) and silhouette closeness
    edge (P,) in [0, 1]."""
    albedo = m.albedo
    if m.palmar.any():
        w = np.clip((n @ m.palmar + 0.15) / 0.6, 0.0, 1.0)[:, None]
        albedo = albedo + w * (m.palm - albedo)
    ndl = n @ light.direction.astype(np.float32)
    diffuse = np.clip((ndl + 0.3) / 1.3, 0.0, 1.0)
    intensity = light.ambient + (1.0 - light.ambient) * diffuse
    # Skin scatters red light into its shadows; the depth cue and rim darkening separate overlaps.
    warm = _WARM + (1.0 - _WARM) * diffuse[:, None]
    cue = np.clip(1.0 - 1.6 * (z - light.z_ref), 0.72, 1.0) * (1.0 - 0.12 * edge ** 4)
    color = albedo * light.color.astype(np.float32) * (intensity * cue)[:, None] * warm
    if m.spec > 0:
        h = light.direction + np.array([0.0, 0.0, -1.0])
        h = (h / np.linalg.norm(h)).astype(np.float32)
        color = color + m.spec * np.clip(n @ h, 0.0, 1.0)[:, None] ** 24
    return color


class _Canvas:
    """The supersampled region being rendered: colour, depth and owner buffers plus pixel centres."""

    def __init__(self, x0: int, y0: int, x1: int, y1: int, scale: int):
        self.x0, self.y0, self.scale = x0, y0, scale
        h, w = (y1 - y0) * scale, (x1 - x0) * scale
        self.color = np.zeros((h, w, 3), np.float32)
        self.depth = np.full((h, w), np.inf, np.float32)
        self.owner = np.full((h, w), BACKGROUND, np.int16)
        self.xs = (x0 + (np.arange(w, dtype=np.float32) + 0.5) / scale)
        self.ys = (y0 + (np.arange(h, dtype=np.float32) + 0.5) / scale)

    def window(self, bx0: float, by0: float, bx1: float, by1: float):
        """Canvas index ranges covering an image-space box, or None when it misses the canvas."""
        h, w = self.depth.shape
        j0 = max(int(np.floor((bx0 - self.x0) * self.scale)), 0)
        j1 = min(int(np.ceil((bx1 - self.x0) * self.scale)) + 1, w)
        i0 = max(int(np.floor((by0 - self.y0) * self.scale)), 0)
        i1 = min(int(np.ceil((by1 - self.y0) * self.scale)) + 1, h)
        if j0 >= j1 or i0 >= i1:
            return None
        return i0, i1, j0, j1

    def write(self, win_index, inside, z, normal_fn, edge, material: Material, light: Light) -> None:
        """Depth-test one primitive's surface points (inside: mask of the window) and shade the winners.

        normal_fn(mask) -> (P, 3) unit normals of the winning points (computed only for them)."""
        i0, i1, j0, j1 = win_index
        win = inside & (z < self.depth[i0:i1, j0:j1])
        if not win.any():
            return
        ii, jj = np.nonzero(win)
        zz = z[win]
        self.depth[i0 + ii, j0 + jj] = zz
        self.owner[i0 + ii, j0 + jj] = material.owner
        self.color[i0 + ii, j0 + jj] = _shade(normal_fn(win), zz, edge[win], material, light)


def _draw_capsule(cv: _Canvas, c: Capsule, K: np.ndarray, light: Light) -> None:
    seg = _clip_near(c.p0, c.p1)
    if seg is None:
        return
    p0, p1 = seg
    f = float(K[0, 0])
    a, b = project(np.stack([p0, p1]), K)
    rho0, rho1 = f * c.r0 / p0[2], f * c.r1 / p1[2]
    w = cv.window(min(a[0] - rho0, b[0] - rho1), min(a[1] - rho0, b[1] - rho1),
                  max(a[0] + rho0, b[0] + rho1), max(a[1] + rho0, b[1] + rho1))
    if w is None:
        return
    i0, i1, j0, j1 = w
    ab = (b - a).astype(np.float32)
    qx = cv.xs[j0:j1][None, :] - np.float32(a[0])
    qy = cv.ys[i0:i1][:, None] - np.float32(a[1])
    tu = (qx * ab[0] + qy * ab[1]) / max(float(ab @ ab), 1e-12)
    t = np.clip(tu, 0.0, 1.0)
    dx, dy = qx - t * ab[0], qy - t * ab[1]
    d = np.sqrt(dx * dx + dy * dy)
    rho = np.float32(rho0) + t * np.float32(rho1 - rho0)
    inside = d < rho
    if not inside.any():
        return
    k = np.minimum(d / np.maximum(rho, 1e-6), 1.0)
    front = np.sqrt(1.0 - k * k)
    z = np.float32(p0[2]) + t * np.float32(p1[2] - p0[2]) - (np.float32(c.r0) + t * np.float32(c.r1 - c.r0)) * front
    # Beyond a joined end, shade as the tube continuing (distance to the axis line, not to the end point).
    cont = np.zeros_like(inside)
    if c.joined[0]:
        cont |= tu < 0
    if c.joined[1]:
        cont |= tu > 1
    if cont.any():
        lx, ly = qx - tu * ab[0], qy - tu * ab[1]
        dx, dy = np.where(cont, lx, dx), np.where(cont, ly, dy)
        k = np.where(cont, np.minimum(np.sqrt(lx * lx + ly * ly) / np.maximum(rho, 1e-6), 1.0), k)

    def normals(m):
        kk, ex, ey = k[m], dx[m], dy[m]
        inv = kk / np.maximum(np.sqrt(ex * ex + ey * ey), 1e-6)
        return np.stack([ex * inv, ey * inv, -np.sqrt(1.0 - kk * kk)], axis=-1)

    cv.write(w, inside, z, normals, k, c.material, light)


def _draw_triangle(cv: _Canvas, tri: Triangle, K: np.ndarray, light: Light) -> None:
    v = tri.vertices
    if np.any(v[:, 2] < Z_NEAR):
        return
    uv = project(v, K)
    w = cv.window(uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
    if w is None:
        return
    i0, i1, j0, j1 = w
    (ax, ay), (bx, by), (cx, cy) = uv
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    if abs(det) < 1e-9:
        return
    px = cv.xs[j0:j1][None, :] - np.float32(cx)
    py = cv.ys[i0:i1][:, None] - np.float32(cy)
    l0 = ((by - cy) * px + (cx - bx) * py) / np.float32(det)
    l1 = ((cy - ay) * px + (ax - cx) * py) / np.float32(det)
    l2 = 1.0 - l0 - l1
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    if not inside.any():
        return
    z = (l0 * v[0, 2] + l1 * v[1, 2] + l2 * v[2, 2]).astype(np.float32)
    normal = np.cross(v[1] - v[0], v[2] - v[0])
    normal = normal / max(np.linalg.norm(normal), 1e-12)
    dome = tri.material.dome
    if dome is not None:
        normal = dome[2]
    if normal[2] > 0:   # face the camera
        normal = -normal

    def normals(m):
        n = np.broadcast_to(normal.astype(np.float32), (int(m.sum()), 3))
        if dome is None:
            return n
        p = l0[m, None] * v[0] + l1[m, None] * v[1] + l2[m, None] * v[2]
        off = (p - dome[0]) / dome[1]
        off = off - (off @ normal)[:, None] * normal
        n = n + 0.9 * off.astype(np.float32)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    cv.write(w, inside, z + np.float32(2e-4), normals, np.zeros_like(z), tri.material, light)


def rasterize(prim: Primitives, K: np.ndarray, width: int, height: int, light: Light, scale: int = 2) -> Raster | None:
    """Render all primitives inside their image extent (clipped to the image) at ``scale``x supersampling.

    Returns None when nothing falls inside the image.
    """
    bounds = primitive_bounds(prim, K)
    if bounds is None:
        return None
    x0, y0 = max(int(np.floor(bounds[0])), 0), max(int(np.floor(bounds[1])), 0)
    x1, y1 = min(int(np.ceil(bounds[2])), width), min(int(np.ceil(bounds[3])), height)
    if x0 >= x1 or y0 >= y1:
        return None
    cv = _Canvas(x0, y0, x1, y1, scale)
    for tri in prim.triangles:
        _draw_triangle(cv, tri, K, light)
    for cap in prim.capsules:
        _draw_capsule(cv, cap, K, light)
    _contact_shadows(cv, float(K[0, 0]))
    return Raster(cv.color, cv.depth, cv.owner, x0, y0, scale)


def _contact_shadows(cv: _Canvas, focal: float) -> None:
    """Darken surfaces just beside a much nearer surface (a finger over the palm): screen-space ambient
    occlusion from the depth buffer, so overlapping parts read as separate without outlining every part."""
    depth = np.where(np.isfinite(cv.depth), cv.depth, np.float32(1e3))
    k = 2 * cv.scale + 1
    nearest = cv2.erode(depth, np.ones((k, k), np.uint8))
    occlusion = np.clip((depth - nearest - 0.006) / 0.02, 0.0, 1.0)
    occlusion = cv2.GaussianBlur(occlusion, (0, 0), cv.scale)
    hand = cv.owner != BACKGROUND
    cv.color[hand] *= (1.0 - 0.35 * occlusion[hand])[:, None]


def composite(background: np.ndarray, raster: Raster | None) -> np.ndarray:
    """Area-downsample the raster and blend it over a float RGB background (H, W, 3) in [0, 1]."""
    out = background.copy()
    if raster is None:
        return out
    s = raster.scale
    h, w = raster.depth.shape[0] // s, raster.depth.shape[1] // s
    cover = (raster.owner != BACKGROUND).astype(np.float32)
    alpha = cover.reshape(h, s, w, s).mean(axis=(1, 3))
    color = (raster.color * cover[..., None]).reshape(h, s, w, s, 3).mean(axis=(1, 3))
    region = out[raster.y0:raster.y0 + h, raster.x0:raster.x0 + w]
    region[:] = color + (1.0 - alpha[..., None]) * region
    return out


def visibility(raster: Raster | None, joints: np.ndarray, frames: np.ndarray, radii: np.ndarray, K: np.ndarray,
               owner: int, width: int, height: int) -> np.ndarray:
    """(21,) 1.0 where a joint is inside the image and not hidden by anything nearer than its own surface.

    A tip is tested at the centre of its end sphere (the tip point itself lies on the silhouette).
    """
    points = joints.copy()
    for tip in (4, 8, 12, 16, 20):
        points[tip] = joints[tip] - frames[tip][:, 1] * radii[tip]
    uv = project(points, K)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height) & (points[:, 2] > Z_NEAR)
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


def apply_camera(image: np.ndarray, look: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Float RGB (H, W, 3) in [0, 1] -> uint8 through the video's camera: white balance, gain, gamma,
    defocus blur and sensor noise (the noise drawn from ``rng``)."""
    img = image * (look.white_balance * look.gain).astype(np.float32)
    img = np.clip(img, 0.0, 1.0) ** np.float32(look.gamma)
    if look.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), look.blur_sigma)
    img = img * 255.0 + np.float32(look.noise_sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
