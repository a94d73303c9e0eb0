"""The comparison's video split: every labelled video in exactly one of four sets, so no video that shaped a
trunk (pre-training), a probe (fitting) or a fine-tuned model is ever scored."""
from __future__ import annotations

import numpy as np

SETS = ("pretrain", "probe", "finetune", "test")


def split_videos(videos, fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """{video: set} over the distinct ``videos``: a seeded permutation cut by ``fractions`` (pre-training,
    probe fitting, fine-tuning; the test set takes the rest). Every set gets at least one video when there
    are four or more; the rounding leftovers go to the test set."""
    names = sorted({str(v) for v in videos})
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n = len(order)
    counts = [int(np.floor(f * n)) for f in fractions]
    if n >= len(SETS):
        counts = [max(1, c) for c in counts]
        while sum(counts) > n - 1:          # leave the test set one video at least
            counts[int(np.argmax(counts))] -= 1
    bounds = np.cumsum([0] + counts)
    out = {}
    for i, name in enumerate(order):
        k = int(np.searchsorted(bounds, i, side="right")) - 1
        out[name] = SETS[min(k, len(SETS) - 1)]
    return out
