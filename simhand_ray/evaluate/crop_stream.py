"""Dataset records -> a Ray Dataset of model inputs: each image read, its hand cropped (and augmented, and
mirrored when left) by ``preprocess.prepare_hand`` in Ray Data tasks, block by block in parallel.

Fine-tuning streams it into Ray Train, evaluation into its predictor actors; the records themselves are
light (metadata only), so the driver holds every record and no image.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from simhand_ray.evaluate import preprocess
from simhand_ray.evaluate.datasets import read_image


def preprocess_batch(batch: dict[str, np.ndarray], spec: dict, augment: bool) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` fn: record rows -> crops + targets (see ``preprocess.prepare_hand``).

    Augmentation draws from fresh entropy, so each epoch's pass sees new jitter.
    """
    crop = preprocess.CropSpec(**spec)
    rng = np.random.default_rng() if augment else None
    outs = [preprocess.prepare_hand(read_image(str(uri)), batch["joints_2d"][i], batch["joints_3d"][i],
                                    str(batch["side"][i]), batch["visible"][i], crop, rng)
            for i, uri in enumerate(batch["image_uri"])]
    res = {k: np.stack([o[k] for o in outs]) for k in ("image", "uv", "xyz", "visible", "frame_from_crop")}
    res["sample_id"] = np.asarray(batch["sample_id"])
    return res


def records_dataset(records, spec: preprocess.CropSpec, augment: bool, shuffle: bool, seed: int | None = None,
                    batch_size: int = 16, rows_per_block: int = 128):
    """Records -> a Ray Dataset of model inputs (crops read and prepared lazily, block by block in parallel).

    Shuffling is cheap on purpose: the light records are permuted once here, the blocks are re-ordered on
    every pass (``randomize_block_order``), and the trainer adds a local shuffle buffer; an all-to-all
    ``random_shuffle`` of tiny rows would cost more than the epoch on small datasets.
    """
    import ray

    rows = [r.to_row() for r in records]
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    blocks = int(np.clip(len(rows) // rows_per_block, 1, 2048))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(preprocess_batch, fn_kwargs={"spec": asdict(spec), "augment": augment},
                          batch_size=batch_size, batch_format="numpy")
