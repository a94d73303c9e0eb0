"""OpenMMLab labeler (SPEC §1): mmdet RTMDet hand detector, then mmpose RTMPose top-down 2D hand pose.

Both models are built from configs (by default the RTMDet-nano hand and RTMPose-m hand5 configs that ship
inside the mmpose package) and filled with state dicts read from a local path, an s3:// URI or an http(s)://
URL such as the model zoo's (``model_files``: fetched once per node into a cache). Frames go through the detector
``batch_size`` at a time and their boxes through the pose model ``pose_batch_size`` at a time, under autocast
to fp16 / bf16 when asked (``precision``; bf16 by default on a GPU). Checkpoints are
loaded with ``safe_load.load_torch_file`` (``torch.load(weights_only=True)``): a checkpoint is code as well as
data when unpickled in full, and the labeler runs on every worker of a cluster. mmengine checkpoints pickle
numpy metadata (and, from training, a message hub); exactly those types are allowlisted, anything else is
refused naming the file and the global.

Handedness: neither model predicts it, and 2D keypoint geometry cannot tell a left palm from a right back of
the hand (both give the same winding of the joints). So every hand is reported as ``"right"`` with
``handedness_score=0.0`` (= unknown), and no mirroring happens downstream for this backend unless a
handedness classifier is added.

Keypoint scores: RTMPose's SimCC scores are raw maxima, not probabilities (they can exceed 1 or be negative);
they are clipped to [0, 1], which keeps the usual thresholds (e.g. 0.3) meaning what they mean in mmpose.
Coordinates are passed through as the models give them, in the frame's pixels.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Sequence

import numpy as np
import torch

from simhand_ray.compat import mmcv_ext
from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers.base import DetectedHand, FrameRef
from simhand_ray.mining.labelers.model_files import ModelFileMissing, local_copy
from simhand_ray.safe_load import ModelFileError, load_torch_file, mmengine_globals

logger = logging.getLogger(__name__)

#: Default configs, relative to the mmpose package's bundled ``.mim`` folder.
DEFAULT_DET_CONFIG = "demo/mmdetection_cfg/rtmdet_nano_320-8xb32_hand.py"
DEFAULT_POSE_CONFIG = "configs/hand_2d_keypoint/rtmpose/hand5/rtmpose-m_8xb256-210e_hand5-256x256.py"
NUM_KEYPOINTS = 21


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, not a state dict, unreadable, or pickling more than tensors and the
    mmengine allowlist."""


def bundled_config(relpath: str) -> str:
    """Path of a config file shipped inside the installed mmpose package (its ``.mim`` folder)."""
    import mmpose
    path = os.path.join(os.path.dirname(mmpose.__file__), ".mim", relpath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config {relpath!r} is not bundled with mmpose {mmpose.__version__} ({path})")
    return path


def load_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Read a state dict (plain, or under ``'state_dict'`` as mmengine saves it, beside ``meta``, ``optimizer``,
    ``message_hub``...) from a path, an s3:// URI or an http(s):// URL (fetched once per node into
    ``model_files``' cache), tensors only, on CPU.

    Loaded with ``weights_only=True`` plus mmengine's checkpoint allowlist (numpy metadata, message hub)."""
    try:
        path = local_copy(uri)
    except ModelFileMissing as e:
        raise CheckpointError(f"checkpoint not found: {e}") from None
    try:
        obj = load_torch_file(path, allow=mmengine_globals(), name=f"checkpoint {uri}")
    except ModelFileError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {uri}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {uri} is not a state dict (a dict of name -> tensor)")
    return obj


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else is passed to torch as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype: None (fp32) for 'fp32' and for 'auto' on CPU; bf16 for 'auto' on a GPU."""
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _to_float(x):
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


def _float_outputs(module: torch.nn.Module) -> None:
    """Make ``module`` return fp32 tensors whatever precision it ran in (under autocast)."""
    forward = module.forward

    def fp32_forward(*args, **kwargs):
        return _to_float(forward(*args, **kwargs))

    module.forward = fp32_forward


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    """RGB -> BGR (mmdet/mmpose pipelines and normalisation expect BGR), once per frame: OpenCV's conversion, not
    numpy's reversed-stride copy, which took 7.2 ms of a 1280x720 frame (cv2: under 1 ms) on the labeler's CPU."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)


class OpenMMLabLabeler:
    """RTMDet hand boxes, then RTMPose 21 keypoints per box (COCO-WholeBody hand order = SPEC order)."""

    def __init__(self, cfg: LabelerConfig):
        mmcv_ext.install()  # before mmdet/mmpose import mmcv.ops
        from mmdet.apis import init_detector
        from mmengine.dataset import Compose
        from mmengine.registry import DefaultScope
        from mmpose.apis import init_model

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        det_sd = load_state_dict(cfg.det_checkpoint)
        pose_sd = load_state_dict(cfg.pose_checkpoint)
        with warnings.catch_warnings():  # "checkpoint is None, use COCO classes": weights are loaded below
            warnings.simplefilter("ignore")
            self.det = init_detector(cfg.det_config or bundled_config(DEFAULT_DET_CONFIG), None, device="cpu")
            self.pose = init_model(cfg.pose_config or bundled_config(DEFAULT_POSE_CONFIG), None, device="cpu")
        self._load(self.det, det_sd, cfg.det_checkpoint)
        self._load(self.pose, pose_sd, cfg.pose_checkpoint)
        self.det.dataset_meta = {"classes": ("hand",)}
        self.det.to(self.device).eval()
        self.pose.to(self.device).eval()
        if self.dtype is not None:   # the heads' decoders go to numpy, which has no bf16: they get fp32
            _float_outputs(self.det.bbox_head)
            _float_outputs(self.pose.head)
        n_kpt = self.pose.dataset_meta.get("num_keypoints")
        if n_kpt != NUM_KEYPOINTS:
            raise ValueError(f"pose config predicts {n_kpt} keypoints; the hand labeler needs {NUM_KEYPOINTS}")

        self._det_scope = self.det.cfg.get("default_scope", "mmdet")
        self._pose_scope = self.pose.cfg.get("default_scope", "mmpose")
        det_pipeline = [dict(t) for t in self.det.cfg.test_dataloader.dataset.pipeline]
        det_pipeline[0]["type"] = "mmdet.LoadImageFromNDArray"  # frames arrive decoded, not as files
        with DefaultScope.overwrite_default_scope(self._det_scope):
            self._det_pipeline = Compose(det_pipeline)
        with DefaultScope.overwrite_default_scope(self._pose_scope):
            self._pose_pipeline = Compose(self.pose.cfg.test_dataloader.dataset.pipeline)
        logger.info("openmmlab labeler on %s (%s): det %s, pose %s", self.device, self.dtype or "fp32",
                    cfg.det_checkpoint, cfg.pose_checkpoint)

    def _autocast(self):
        """Autocast to the labeler's precision (a no-op context for fp32)."""
        import contextlib

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype)

    @staticmethod
    def _load(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], uri: str) -> None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {uri} does not fit its model config: {e}") from e

    def detect(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Hand boxes of each RGB frame in one batch: per frame (boxes (n, 4) x0 y0 x1 y1, scores (n,)).

        At most ``max_hands`` per frame, highest score first (after the model's own NMS).
        """
        return self._detect([_to_bgr(f) for f in frames])

    @torch.no_grad()
    def _detect(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``detect`` of BGR frames."""
        from mmengine.dataset import pseudo_collate
        from mmengine.registry import DefaultScope

        if not frames:
            return []
        with DefaultScope.overwrite_default_scope(self._det_scope):
            batch = pseudo_collate([self._det_pipeline(dict(img=f, img_id=i)) for i, f in enumerate(frames)])
            with self._autocast():
                results = self.det.test_step(batch)
        out = []
        for frame, res in zip(frames, results):
            boxes = res.pred_instances.bboxes.float().cpu().numpy().reshape(-1, 4)
            scores = res.pred_instances.scores.float().cpu().numpy().reshape(-1)
            keep = np.argsort(-scores, kind="stable")[: self.cfg.max_hands]
            h, w = frame.shape[:2]
            boxes = np.clip(boxes[keep], 0, [w, h, w, h]).astype(np.float32)
            out.append((boxes, scores[keep].astype(np.float32)))
        return out

    def pose_on_boxes(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-down pose of given boxes in RGB frames, all boxes of all frames in one batch.

        boxes[i]: (n_i, 4) x0 y0 x1 y1 in frame i.  Returns per frame (keypoints (n_i, 21, 2), scores (n_i, 21)).
        """
        return self._pose_on_boxes([_to_bgr(f) for f in frames], boxes)

    @torch.no_grad()
    def _pose_on_boxes(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``pose_on_boxes`` of BGR frames."""
        from mmengine.dataset import pseudo_collate
        from mmengine.registry import DefaultScope

        items, owner = [], []
        for i, (bgr, fb) in enumerate(zip(frames, boxes)):
            fb = np.asarray(fb, np.float32).reshape(-1, 4)
            for box in fb:
                items.append(dict(img=bgr, bbox=box[None], bbox_score=np.ones(1, np.float32),
                                  **self.pose.dataset_meta))
                owner.append(i)
        kpts = [np.zeros((0, NUM_KEYPOINTS, 2), np.float32) for _ in frames]
        kpt_scores = [np.zeros((0, NUM_KEYPOINTS), np.float32) for _ in frames]
        if not items:
            return list(zip(kpts, kpt_scores))
        step = self.cfg.pose_batch_size or len(items)
        results = []
        with DefaultScope.overwrite_default_scope(self._pose_scope):
            for a in range(0, len(items), step):
                batch = pseudo_collate([self._pose_pipeline(d) for d in items[a:a + step]])
                with self._autocast():
                    results.extend(self.pose.test_step(batch))
        per_frame: list[list] = [[] for _ in frames]
        for i, res in zip(owner, results):
            inst = res.pred_instances
            per_frame[i].append((np.asarray(inst.keypoints, np.float32).reshape(NUM_KEYPOINTS, 2),
                                 np.asarray(inst.keypoint_scores, np.float32).reshape(NUM_KEYPOINTS)))
        for i, lst in enumerate(per_frame):
            if lst:
                kpts[i] = np.stack([k for k, _ in lst])
                kpt_scores[i] = np.clip(np.stack([s for _, s in lst]), 0.0, 1.0)
        return list(zip(kpts, kpt_scores))

    def label(self, frames: Sequence[np.ndarray], refs: Sequence[FrameRef]) -> list[list[DetectedHand]]:
        """Detect over the batch of RGB frames, then pose over all their boxes at once (each frame converted to
        BGR once for both); refs are not needed."""
        bgr = [_to_bgr(f) for f in frames]
        detections = self._detect(bgr)
        poses = self._pose_on_boxes(bgr, [b for b, _ in detections])
        out = []
        for (boxes, scores), (kpts, kpt_scores) in zip(detections, poses):
            out.append([DetectedHand(box=boxes[j], det_score=float(scores[j]), keypoints=kpts[j],
                                     keypoint_scores=kpt_scores[j], handedness="right", handedness_score=0.0)
                        for j in range(len(boxes))])
        return out
