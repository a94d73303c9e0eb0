"""Ground truth as a labeler: hands of synthetic videos looked up from their sidecar label tables.

``LabelerConfig.groundtruth_labels`` names one labels Parquet file or a directory / s3:// prefix of them
(see ``sidecar_labels``); empty means "next to each video": ``<stem>.labels.parquet`` beside
the video named by ``FrameRef.uri`` (``<video>.labels.parquet`` is tried too). Frames are matched by
(video_id, frame_index), falling back to the video's file name when a manifest renamed the video_id.
det_score and handedness_score are 1; keypoint scores are the labels' visibility (1 visible, 0 occluded
or outside the frame). A video without labels is an error, not an empty frame: nothing is silently dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from simhand_ray import storage
from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers.base import DetectedHand, FrameRef
from simhand_ray.mining.labelers.sidecar_labels import LABEL_SUFFIX, LABELS, column_array, sidecar_uri

_Key = tuple[str, int]


class GroundTruthLabeler:
    """Looks hands up by (video, frame) in label tables loaded once (all of them, or per video lazily)."""

    def __init__(self, cfg: LabelerConfig):
        self.cfg = cfg
        self._hands: dict[_Key, list[DetectedHand]] = {}
        self._sizes: dict[_Key, tuple[int, int]] = {}
        self._by_file: dict[str, str] = {}        # video file name (and stem) -> video_id
        self._loaded_videos: set[str] = set()
        self._tried_sidecars: set[str] = set()
        if cfg.groundtruth_labels:
            self._add_table(storage.read_parquet(cfg.groundtruth_labels, schema=LABELS))

    def _add_table(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        kp = column_array(table, "keypoints_2d", (21, 2))
        box = column_array(table, "box", (4,))
        vis = column_array(table, "visibility", (21,))
        cols = table.select(["video_id", "video_file", "frame_index", "hand_index", "handedness",
                             "image_width", "image_height"]).to_pydict()
        order = sorted(range(table.num_rows), key=lambda i: (cols["video_id"][i], cols["frame_index"][i],
                                                              cols["hand_index"][i]))
        for i in order:
            vid, frame = cols["video_id"][i], int(cols["frame_index"][i])
            self._loaded_videos.add(vid)
            self._by_file.setdefault(cols["video_file"][i], vid)
            self._by_file.setdefault(cols["video_file"][i].rsplit(".", 1)[0], vid)
            self._sizes[(vid, frame)] = (int(cols["image_width"][i]), int(cols["image_height"][i]))
            self._hands.setdefault((vid, frame), []).append(DetectedHand(
                box=box[i], det_score=1.0, keypoints=kp[i], keypoint_scores=vis[i],
                handedness=cols["handedness"][i], handedness_score=1.0))

    def _video_of(self, ref: FrameRef) -> str:
        """The labels' video_id of a frame: its own id, else its file name; loads a sidecar if needed."""
        if ref.video_id in self._loaded_videos:
            return ref.video_id
        name = storage.basename(ref.uri)
        for key in (name, name.rsplit(".", 1)[0]):
            if key in self._by_file:
                return self._by_file[key]
        if not self.cfg.groundtruth_labels and ref.uri not in self._tried_sidecars:
            self._tried_sidecars.add(ref.uri)
            for uri in (sidecar_uri(ref.uri), ref.uri + LABEL_SUFFIX):
                if storage.exists(uri):
                    self._add_table(storage.read_parquet(uri, schema=LABELS))
                    return self._video_of(ref)
        where = self.cfg.groundtruth_labels or f"a sidecar {sidecar_uri(ref.uri)}"
        raise FileNotFoundError(f"no ground-truth labels for video {ref.video_id!r} ({ref.uri}) in {where}")

    def label(self, frames: Sequence[np.ndarray], refs: Sequence[FrameRef]) -> list[list[DetectedHand]]:
        if len(frames) != len(refs):
            raise ValueError("the groundtruth labeler needs one FrameRef per frame")
        out = []
        for frame, ref in zip(frames, refs):
            vid = self._video_of(ref)
            key = (vid, int(ref.frame_index))
            hands = self._hands.get(key, [])[: self.cfg.max_hands]
            out.append([_rescaled(h, self._sizes[key], frame.shape[1], frame.shape[0]) for h in hands])
        return out


def _rescaled(hand: DetectedHand, size: tuple[int, int], width: int, height: int) -> DetectedHand:
    """A copy of a labelled hand in the coordinates of the frame as decoded (the same size, normally)."""
    sx, sy = width / size[0], height / size[1]
    scale = np.array([sx, sy], np.float32)
    return DetectedHand(box=hand.box * np.tile(scale, 2), det_score=hand.det_score,
                        keypoints=hand.keypoints * scale, keypoint_scores=hand.keypoint_scores.copy(),
                        handedness=hand.handedness, handedness_score=hand.handedness_score)
