"""Backgrounds for synthetic videos: random crops of real photos or procedural clutter, slowly panning.

A video gets one canvas a little larger than its frames; each frame is a window of that canvas whose
offset moves smoothly, like a head-mounted camera drifting. Colours are float32 RGB in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

PAN_MARGIN = 1.25   # canvas size relative to the frame


def decode_images(blobs: Sequence[bytes]) -> list[np.ndarray]:
    """Encoded images (JPEG/PNG bytes) -> RGB uint8 arrays; undecodable blobs are skipped."""
    out = []
    for b in blobs:
        im = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if im is not None:
            out.append(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))
    return out


def _photo_crop(rng: np.random.Generator, image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    zoom = rng.uniform(1.0, 2.0)
    ch = min(h, int(round(h / zoom)))
    cw = min(w, int(round(ch * width / height)))
    ch = min(ch, int(round(cw * height / width)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = image[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR)
    out = out.astype(np.float32) / 255.0
    return np.clip(out * rng.normal(1.0, 0.08, 3).astype(np.float32) + rng.normal(0, 0.04), 0, 1)


def _procedural(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Indoor-looking clutter: a two-colour gradient, soft blobs, a few rectangles and edges, texture."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    g = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    g = (g - g.min()) / max(g.max() - g.min(), 1e-6)
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    img = (c0 + g[..., None] * (c1 - c0)).astype(np.float32)
    for _ in range(rng.integers(2, 7)):
        color = tuple(float(v) for v in rng.uniform(0.0, 1.0, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            w2, h2 = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 10, height // 2))
            cv2.rectangle(img, (x - w2, y - h2), (x + w2, y + h2), color, -1)
        else:
            axes = (int(rng.integers(width // 12, width // 3)), int(rng.integers(height // 12, height // 3)))
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    for _ in range(rng.integers(0, 5)):
        p = rng.integers(0, [width, height], size=(2, 2))
        color = tuple(float(v) for v in rng.uniform(0.0, 1.0, 3))
        cv2.line(img, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), color, int(rng.integers(1, 6)))
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.0, 6.0)))
    texture = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
    texture = cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    return np.clip(img + float(rng.uniform(0.0, 0.05)) * texture, 0, 1)


def make_canvas(rng: np.random.Generator, sources: Sequence[np.ndarray], width: int, height: int,
                photo_prob: float = 0.7) -> np.ndarray:
    """(H', W', 3) float32 canvas for one video (PAN_MARGIN x the frame): a photo crop or clutter, with a
    random illumination gradient on top."""
    cw, ch = int(np.ceil(width * PAN_MARGIN)), int(np.ceil(height * PAN_MARGIN))
    if sources and rng.random() < photo_prob:
        img = _photo_crop(rng, sources[int(rng.integers(len(sources)))], cw, ch)
    else:
        img = _procedural(rng, cw, ch)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    cx, cy = rng.uniform(0, cw), rng.uniform(0, ch)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(cw, ch)
    shade = 1.0 - float(rng.uniform(0.0, 0.5)) * np.clip(r, 0, 1)
    return (img * shade[..., None]).astype(np.float32)


def pan_path(rng: np.random.Generator, canvas: np.ndarray, width: int, height: int) -> np.ndarray:
    """(2, 2) start and end top-left offsets (x, y) of the frame window on the canvas."""
    mx, my = canvas.shape[1] - width, canvas.shape[0] - height
    return rng.uniform(0, 1, size=(2, 2)) * np.array([mx, my], dtype=np.float64)


def frame_background(canvas: np.ndarray, path: np.ndarray, t: float, width: int, height: int) -> np.ndarray:
    """(H, W, 3) window of the canvas at time t in [0, 1] (sub-pixel pan, smooth in t)."""
    ox, oy = path[0] + (3 * t * t - 2 * t ** 3) * (path[1] - path[0])
    m = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]], dtype=np.float64)
    return cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
