"""Near-duplicate crops (SPEC §2: positives are *non-identical* samples): a 64-bit perceptual hash of each
hand's crop, and the rule that drops a neighbour whose crop is the same picture as the query's.

The hash is the classic DCT "pHash": the crop in grayscale, area-resized to 32 x 32, its 2-D DCT-II, the
8 x 8 lowest-frequency coefficients (DC included), each compared with their median; bit 63 - i (most
significant first) is coefficient i = 8 u + v (u the vertical, v the horizontal frequency) > median. The
low frequencies are the picture's layout, not its fine detail, so the hash survives JPEG re-encoding,
resizing, small shifts of the crop window and colour changes, while two different pictures differ in
about half the bits.

Two crops are near-duplicates when both have a hash and the hashes differ in at most ``max_bits`` bits
(``IndexConfig.near_duplicate_bits``, 16 by default; measured in the README's "Graph and pairs": the
same frame re-encoded / resized / damaged is <= 12 bits apart when the labeler cut the same window,
different pictures >= 22). It is about content, never about keypoints: two different pictures of the
same pose are exactly the positives the method wants. A crop that does not decode (or is empty) has no
hash and is never a near-duplicate.

Everything here is a pure function of its inputs (no Ray), so it is tested directly.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

#: The side of the grayscale image the DCT is taken of, and the side of the low-frequency block hashed.
HASH_SIDE = 32
HASH_LOW = 8
#: Bits in a hash.
HASH_BITS = HASH_LOW * HASH_LOW


def image_phash(gray: np.ndarray) -> int:
    """The 64-bit pHash (module docstring) of a grayscale image (H, W), uint8 or float, as a Python int."""
    g = np.asarray(gray)
    if g.ndim != 2 or min(g.shape) < 1:
        raise ValueError(f"a grayscale image (H, W) is needed, got shape {g.shape}")
    g = g.astype(np.float32)
    if g.shape != (HASH_SIDE, HASH_SIDE):
        g = cv2.resize(g, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(np.ascontiguousarray(g))[:HASH_LOW, :HASH_LOW].reshape(-1).astype(np.float64)
    bits = low > np.median(low)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def decode_gray(jpeg: bytes) -> np.ndarray | None:
    """A crop JPEG as grayscale, decoded at 1/4 scale by libjpeg when that still leaves >= 32 px a side
    (4-5x cheaper than a full decode; the hash only looks at 32 x 32). None when it does not decode."""
    if not jpeg:
        return None
    buf = np.frombuffer(jpeg, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if img is not None and min(img.shape[:2]) < HASH_SIDE:
        img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return img


class CropHashes(NamedTuple):
    """hashes: (N,) uint64 (0 where there is none); ok: (N,) bool, False for a crop that has no hash."""
    hashes: np.ndarray
    ok: np.ndarray


def crop_hashes(jpegs: Sequence[bytes | None]) -> CropHashes:
    """The pHash of every crop JPEG (module docstring); undecodable or empty crops get ok = False."""
    n = len(jpegs)
    hashes, ok = np.zeros(n, np.uint64), np.zeros(n, bool)
    for i, data in enumerate(jpegs):
        gray = decode_gray(data) if data is not None else None
        if gray is not None:
            hashes[i], ok[i] = image_phash(gray), True
    return CropHashes(hashes, ok)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes a and b (broadcast) -> int array."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))).astype(np.int64)


def near_duplicates(q_hash: np.ndarray, q_ok: np.ndarray, hashes: np.ndarray, ok: np.ndarray,
                    max_bits: int) -> np.ndarray:
    """Elementwise (broadcast): True where both crops have a hash and they differ in <= max_bits bits.
    ``max_bits < 0`` turns the rule off (nothing is a near-duplicate)."""
    shape = np.broadcast_shapes(np.shape(q_hash), np.shape(hashes))
    if max_bits < 0:
        return np.zeros(shape, bool)
    return np.asarray(q_ok, bool) & np.asarray(ok, bool) & (hamming(q_hash, hashes) <= max_bits)


class Filtered(NamedTuple):
    """ids (B, k) int64 / d2 (B, k): the kept neighbours, -1 / inf padded; dropped (B,): near-duplicates
    that ranked before the k-th kept neighbour (they would have been in the list); short (B,): rows with
    fewer than k kept whose candidate list was full, so more candidates may exist beyond it."""
    ids: np.ndarray
    d2: np.ndarray
    dropped: np.ndarray
    short: np.ndarray


def drop_near_duplicates(ids: np.ndarray, d2: np.ndarray, q_hash: np.ndarray, q_ok: np.ndarray,
                         hashes: np.ndarray, ok: np.ndarray, max_bits: int, k: int) -> Filtered:
    """Remove near-duplicates of each query from its candidates and keep the first k of the rest.

    ids, d2: (B, c) candidates ordered by (distance, id), -1 / inf padded (ids index ``hashes``/``ok``);
    q_hash, q_ok: (B,) the queries' hashes. The order of the kept candidates is unchanged.
    """
    ids = np.asarray(ids, np.int64)
    b, c = ids.shape
    real = ids >= 0
    safe = np.where(real, ids, 0)
    dup = real & near_duplicates(np.asarray(q_hash)[:, None], np.asarray(q_ok)[:, None], hashes[safe],
                                 ok[safe], max_bits)
    keep = real & ~dup
    order = np.argsort(~keep, axis=1, kind="stable")          # kept first, in their order
    out_ids = np.take_along_axis(np.where(keep, ids, -1), order, 1)[:, :k]
    out_d2 = np.take_along_axis(np.where(keep, d2, np.inf), order, 1)[:, :k]
    if out_ids.shape[1] < k:
        pad = k - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_d2 = np.pad(out_d2, ((0, 0), (0, pad)), constant_values=np.inf)
    kept = keep.sum(axis=1)
    # position of the k-th kept candidate (c when fewer): near-duplicates before it were displaced
    kth = np.where(kept >= k, np.argmax(np.cumsum(keep, axis=1) >= k, axis=1), c - 1) if c else np.zeros(b, int)
    dropped = (dup & (np.arange(c)[None, :] <= kth[:, None])).sum(axis=1)
    short = (kept < k) & real.all(axis=1) & (c > 0)
    return Filtered(out_ids, out_d2, dropped.astype(np.int64), short)
