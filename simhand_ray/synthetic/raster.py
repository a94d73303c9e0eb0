"""A small software rasteriser for tapered capsules and triangles, with a depth buffer and deferred shading.

Every primitive is evaluated per pixel over its own bounding box: a capsule's front-surface depth and
normal follow from the pixel's distance to its projected axis (a sphere-swept cone seen in screen space),
so overlapping parts intersect smoothly and the nearest surface wins: occlusion is right pixel by pixel,
which is stricter than painting back to front. Normals and material ids are kept per pixel and shaded
once at the end (wrapped Lambert + a little Blinn specular, palm-side tint, a depth cue and screen-space
contact shadows), so overdraw costs no shading. The region of interest is supersampled and averaged down.

Coordinates: camera space in metres (x right, y down, z forward); image coordinates are continuous
pixels with pixel centres at i + 0.5 (K's principal point of a centred W x H camera is (W/2, H/2)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

Z_NEAR = 0.05
OCCLUDER = -1          # owner id of occluders; hands are 0, 1, ...
BACKGROUND = -2


@dataclass(frozen=True, eq=False)
class Material:
    """Surface of a primitive: albedo (3,) sRGB in [0, 1]; palm-side albedo (3,) blended in where the
    normal faces ``palmar`` (3,) (zeros: no tint); specular strength; owner (hand index or OCCLUDER).
    For triangles an optional ``Dome`` replaces the flat normal, so a fan of triangles shades as one surface."""
    albedo: np.ndarray
    palm: np.ndarray
    palmar: np.ndarray
    spec: float
    owner: int
    dome: "Dome | None" = None


@dataclass(frozen=True, eq=False)
class Dome:
    """The shading normal of a face: ``normal`` (3,) bent outwards from ``centre`` (3,) by ``bend`` per
    ``radius`` metres, like a cushion: a gentle bulge that meets the rounded capsule edges around it."""
    centre: np.ndarray
    radius: float
    normal: np.ndarray
    bend: float = 0.3


def material(albedo, palm=None, palmar=None, spec: float = 0.06, owner: int = 0, dome=None) -> Material:
    palm = albedo if palm is None else palm
    palmar = np.zeros(3) if palmar is None else palmar
    return Material(np.asarray(albedo, np.float32), np.asarray(palm, np.float32), np.asarray(palmar, np.float32),
                    float(spec), int(owner), dome)


@dataclass
class Capsule:
    """A tapered capsule: axis p0 -> p1 (camera space, metres), radii r0, r1. ``joined`` marks ends that
    continue into the next capsule of a chain: there it is shaded as the tube going on, not as a ball."""
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

    def capsule(self, p0, p1, r0, r1, mat: Material, joined: tuple[bool, bool] = (False, False)) -> None:
        self.capsules.append(Capsule(np.asarray(p0, float), np.asarray(p1, float), float(r0), float(r1), mat, joined))

    def triangle(self, a, b, c, mat: Material) -> None:
        self.triangles.append(Triangle(np.stack([a, b, c]).astype(float), mat))

    def extend(self, other: "Primitives") -> None:
        self.capsules.extend(other.capsules)
        self.triangles.extend(other.triangles)


@dataclass(frozen=True)
class Light:
    direction: np.ndarray   # (3,) unit, from the surface towards the light
    color: np.ndarray       # (3,)
    ambient: float
    z_ref: float            # depth of the nearest hand part (metres), for the depth cue


@dataclass
class Raster:
    """A rendered region at ``scale`` x supersampling: color (h, w, 3) float32, depth (h, w) front-surface
    z (inf where empty), owner (h, w) int16 (BACKGROUND where empty); top-left image pixel (x0, y0)."""
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
    p = np.asarray(points, dtype=np.float64) @ np.asarray(K, dtype=np.float64).T
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


class _Canvas:
    """G-buffer of the supersampled region: depth, material id, normal and silhouette closeness."""

    def __init__(self, x0: int, y0: int, x1: int, y1: int, scale: int):
        self.x0, self.y0, self.scale = x0, y0, scale
        h, w = (y1 - y0) * scale, (x1 - x0) * scale
        self.depth = np.full((h, w), np.inf, np.float32)
        self.mat = np.full((h, w), -1, np.int32)
        self.normal = np.zeros((h, w, 3), np.float32)
        self.edge = np.zeros((h, w), np.float32)
        self.xs = (x0 + (np.arange(w, dtype=np.float32) + 0.5) / scale)
        self.ys = (y0 + (np.arange(h, dtype=np.float32) + 0.5) / scale)
        self.materials: list[Material] = []

    def window(self, bx0: float, by0: float, bx1: float, by1: float):
        """Canvas index ranges (i0, i1, j0, j1) covering an image-space box, or None when it misses."""
        h, w = self.depth.shape
        j0 = max(int(np.floor((bx0 - self.x0) * self.scale)), 0)
        j1 = min(int(np.ceil((bx1 - self.x0) * self.scale)) + 1, w)
        i0 = max(int(np.floor((by0 - self.y0) * self.scale)), 0)
        i1 = min(int(np.ceil((by1 - self.y0) * self.scale)) + 1, h)
        if j0 >= j1 or i0 >= i1:
            return None
        return i0, i1, j0, j1

    def depth_test(self, ii: np.ndarray, jj: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Mask of the candidate pixels (canvas indices ii, jj) where depth z is the nearest so far."""
        return z < self.depth[ii, jj]

    def write(self, ii, jj, z, n, edge, mat: Material) -> None:
        self.depth[ii, jj] = z
        self.normal[ii, jj] = n
        self.edge[ii, jj] = edge
        self.mat[ii, jj] = len(self.materials)
        self.materials.append(mat)


def _draw_capsule(cv: _Canvas, c: Capsule, K: np.ndarray) -> None:
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
    abx, aby = np.float32(b[0] - a[0]), np.float32(b[1] - a[1])
    inv_len2 = np.float32(1.0 / max(float(abx * abx + aby * aby), 1e-12))
    qx = cv.xs[j0:j1][None, :] - np.float32(a[0])
    qy = cv.ys[i0:i1][:, None] - np.float32(a[1])
    tu = (qx * abx + qy * aby) * inv_len2
    t = np.clip(tu, 0.0, 1.0)
    dx, dy = qx - t * abx, qy - t * aby
    d2 = dx * dx + dy * dy
    ii, jj = np.nonzero(d2 < np.float32(max(rho0, rho1) ** 2))      # cheap superset of the inside
    if not len(ii):
        return
    t, d2, dx, dy, tu = t[ii, jj], d2[ii, jj], dx[ii, jj], dy[ii, jj], tu[ii, jj]
    # perspective-correct: depth along the axis is harmonic in screen t; radius follows the 3D fraction s
    inv_z = np.float32(1.0 / p0[2]) + t * np.float32(1.0 / p1[2] - 1.0 / p0[2])
    z_axis = 1.0 / inv_z
    r = np.float32(c.r0) + (t * z_axis * np.float32(1.0 / p1[2])) * np.float32(c.r1 - c.r0)
    rho = np.float32(f) * r * inv_z
    inside = d2 < rho * rho
    if not inside.any():
        return
    d2, rho, dx, dy = d2[inside], rho[inside], dx[inside], dy[inside]
    tu, r, z_axis = tu[inside], r[inside], z_axis[inside]
    ii, jj = ii[inside] + i0, jj[inside] + j0
    k = np.sqrt(d2) / np.maximum(rho, 1e-6)
    front = np.sqrt(np.maximum(1.0 - k * k, 0.0))
    z = z_axis - r * front
    keep = cv.depth_test(ii, jj, z)
    if not keep.any():
        return
    ii, jj, z, k, tu, rho, dx, dy = ii[keep], jj[keep], z[keep], k[keep], tu[keep], rho[keep], dx[keep], dy[keep]
    # Beyond a joined end, shade as the tube continuing (distance to the axis line, not to the end point).
    cont = np.zeros(len(ii), bool)
    if c.joined[0]:
        cont |= tu < 0
    if c.joined[1]:
        cont |= tu > 1
    if cont.any():
        qx = cv.xs[jj[cont]] - np.float32(a[0])
        qy = cv.ys[ii[cont]] - np.float32(a[1])
        lx, ly = qx - tu[cont] * abx, qy - tu[cont] * aby
        dx[cont], dy[cont] = lx, ly
        k[cont] = np.minimum(np.sqrt(lx * lx + ly * ly) / np.maximum(rho[cont], 1e-6), 1.0)
    scale = k / np.maximum(np.sqrt(dx * dx + dy * dy), 1e-6)
    n = np.stack([dx * scale, dy * scale, -np.sqrt(np.maximum(1.0 - k * k, 0.0))], axis=-1)
    cv.write(ii, jj, z, n, k, c.material)


def _draw_triangle(cv: _Canvas, tri: Triangle, K: np.ndarray) -> None:
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
    l0 = (np.float32((by - cy) / det) * px + np.float32((cx - bx) / det) * py)
    l1 = (np.float32((cy - ay) / det) * px + np.float32((ax - cx) / det) * py)
    inside = (l0 >= 0) & (l1 >= 0) & (l0 + l1 <= 1)
    ii, jj = np.nonzero(inside)
    if not len(ii):
        return
    l0, l1 = l0[ii, jj], l1[ii, jj]
    l2 = 1.0 - l0 - l1
    ii, jj = ii + i0, jj + j0
    # perspective-correct: 1/z is linear in screen space; barycentrics re-weighted to 3D ones
    w0, w1, w2 = l0 * np.float32(1.0 / v[0, 2]), l1 * np.float32(1.0 / v[1, 2]), l2 * np.float32(1.0 / v[2, 2])
    z = 1.0 / (w0 + w1 + w2)
    l0, l1, l2 = w0 * z, w1 * z, w2 * z
    z = z + np.float32(2e-4)
    keep = cv.depth_test(ii, jj, z)
    if not keep.any():
        return
    ii, jj, z, l0, l1, l2 = ii[keep], jj[keep], z[keep], l0[keep], l1[keep], l2[keep]
    dome = tri.material.dome
    if dome is None:
        normal = np.cross(v[1] - v[0], v[2] - v[0])
        normal = normal / max(np.linalg.norm(normal), 1e-12)
    else:
        normal = np.asarray(dome.normal, np.float64)
    if normal[2] > 0:   # face the camera
        normal = -normal
    n = np.broadcast_to(normal.astype(np.float32), (len(ii), 3))
    if dome is not None and dome.bend:
        p = l0[:, None] * v[0] + l1[:, None] * v[1] + l2[:, None] * v[2]
        off = (p - dome.centre) / dome.radius
        off = off - (off @ normal)[:, None] * normal
        n = n + np.float32(dome.bend) * off.astype(np.float32)
        n = n / np.sqrt(np.einsum("pc,pc->p", n, n))[:, None]
    cv.write(ii, jj, z, n, np.zeros(len(ii), np.float32), tri.material)


_WARM = np.array([1.0, 0.88, 0.82], np.float32)


def _shade(cv: _Canvas, light: Light) -> tuple[np.ndarray, np.ndarray]:
    """Shade every covered pixel of the G-buffer once. Returns color (h, w, 3) float32 (0 where empty)
    and owner (h, w) int16."""
    h, w = cv.depth.shape
    color = np.zeros((h * w, 3), np.float32)
    owner = np.full(h * w, BACKGROUND, np.int16)
    idx = np.flatnonzero(cv.mat >= 0)
    if not len(idx):
        return color.reshape(h, w, 3), owner.reshape(h, w)
    mats = cv.materials
    ids = cv.mat.reshape(-1)[idx]
    owner[idx] = np.array([m.owner for m in mats], np.int16)[ids]
    props = np.array([np.concatenate([m.albedo, m.palm, m.palmar, [m.spec, float(m.palmar.any())]]) for m in mats],
                     np.float32)[ids]
    albedo, palm, palmar, spec, tinted = props[:, 0:3], props[:, 3:6], props[:, 6:9], props[:, 9], props[:, 10]
    n = cv.normal.reshape(-1, 3)[idx]
    z = cv.depth.reshape(-1)[idx]
    edge = cv.edge.reshape(-1)[idx]
    nx, ny, nz = n[:, 0], n[:, 1], n[:, 2]
    tint = np.clip((nx * palmar[:, 0] + ny * palmar[:, 1] + nz * palmar[:, 2] + 0.15) / 0.6, 0.0, 1.0) * tinted
    albedo = albedo + tint[:, None] * (palm - albedo)
    L = light.direction.astype(np.float32)
    diffuse = np.clip((nx * L[0] + ny * L[1] + nz * L[2] + 0.3) / 1.3, 0.0, 1.0)
    intensity = light.ambient + (1.0 - light.ambient) * diffuse
    # Skin scatters red light into its shadows; the depth cue and rim darkening separate overlaps.
    warm = _WARM + (1.0 - _WARM) * diffuse[:, None]
    cue = np.clip(1.0 - 1.6 * (z - light.z_ref), 0.72, 1.0) * (1.0 - 0.12 * edge ** 4)
    rgb = albedo * light.color.astype(np.float32) * (intensity * cue)[:, None] * warm
    half = light.direction + np.array([0.0, 0.0, -1.0])
    hx, hy, hz = (half / np.linalg.norm(half)).astype(np.float32)
    rgb += (spec * np.clip(nx * hx + ny * hy + nz * hz, 0.0, 1.0) ** 24)[:, None]
    color[idx] = rgb
    color = color.reshape(h, w, 3)
    _contact_shadows(color, cv.depth, cv.mat >= 0, cv.scale)
    return color, owner.reshape(h, w)


def _contact_shadows(color: np.ndarray, depth: np.ndarray, covered: np.ndarray, scale: int) -> None:
    """Darken surfaces just beside a much nearer one (a finger over the palm): screen-space ambient
    occlusion from the depth buffer, so overlapping parts read apart without outlining every part."""
    d = np.where(covered, depth, np.float32(1e3))
    k = 2 * scale + 1
    nearest = cv2.erode(d, np.ones((k, k), np.uint8))
    occlusion = np.clip((d - nearest - 0.006) / 0.02, 0.0, 1.0)
    occlusion = cv2.GaussianBlur(occlusion, (0, 0), scale)
    color *= (1.0 - 0.35 * occlusion * covered)[..., None]


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
        _draw_triangle(cv, tri, K)
    for cap in prim.capsules:
        _draw_capsule(cv, cap, K)
    color, owner = _shade(cv, light)
    return Raster(color, cv.depth, owner, x0, y0, scale)


def composite(background: np.ndarray, raster: Raster | None) -> np.ndarray:
    """Average the raster down (coverage as alpha) and blend it over a float RGB background (H, W, 3)."""
    if raster is None:
        return background
    out = background.copy()
    s = raster.scale
    h, w = raster.depth.shape[0] // s, raster.depth.shape[1] // s
    cover = (raster.owner != BACKGROUND).astype(np.float32)
    if s > 1:
        alpha = cv2.resize(cover, (w, h), interpolation=cv2.INTER_AREA)
        color = cv2.resize(raster.color, (w, h), interpolation=cv2.INTER_AREA)   # colour is 0 where uncovered
    else:
        alpha, color = cover, raster.color
    region = out[raster.y0:raster.y0 + h, raster.x0:raster.x0 + w]
    region *= (1.0 - alpha)[..., None]
    region += color
    return out
