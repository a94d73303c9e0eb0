"""Self-made OpenMMLab hand weights for tests and benchmarks (no model zoo download here): the RTMDet-nano and
RTMPose-m hand models built from the configs bundled in mmpose, freshly initialised with a fixed seed.

Random weights find junk or nothing, so the detector's state dict is edited to fire everywhere with fixed-size
boxes (every prior scores sigmoid(4) = 0.98 with a box 2 strides out on each side): that drives NMS, the
max_hands cut and the pose stage. ``model_zoo_layout`` wraps a state dict the way the model zoo publishes it.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import numpy as np
import torch


def build_models():
    """(detector, pose model) on CPU, from the bundled configs, seeded."""
    from simhand_ray.compat import mmcv_ext
    mmcv_ext.install()
    from mmdet.apis import init_detector
    from mmpose.apis import init_model

    from simhand_ray.mining.labelers import openmmlab as om

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = init_detector(om.bundled_config(om.DEFAULT_DET_CONFIG), None, device="cpu")
        pose = init_model(om.bundled_config(om.DEFAULT_POSE_CONFIG), None, device="cpu")
    return det, pose


def firing_detector_state(det) -> dict[str, torch.Tensor]:
    sd = det.state_dict()
    for k, v in sd.items():
        if k.startswith("bbox_head.rtm_cls.") and k.endswith(".bias"):
            v.fill_(4.0)
        elif k.startswith("bbox_head.rtm_reg."):
            v.fill_(2.0 if k.endswith(".bias") else 0.0)
    return sd


def write_checkpoints(folder: str) -> dict[str, str]:
    """``det.pth`` (firing detector), ``pose.pth`` (plain state dict), ``pose_wrapped.pth`` ({state_dict, meta});
    returns their paths by those names."""
    os.makedirs(folder, exist_ok=True)
    det, pose = build_models()
    paths = {"det": os.path.join(folder, "det.pth"), "pose": os.path.join(folder, "pose.pth"),
             "pose_wrapped": os.path.join(folder, "pose_wrapped.pth")}
    torch.save(firing_detector_state(det), paths["det"])
    torch.save(pose.state_dict(), paths["pose"])
    torch.save({"state_dict": pose.state_dict(), "meta": {"epoch": 1}}, paths["pose_wrapped"])
    return paths


def save_model_zoo_checkpoint(model: torch.nn.Module, path: str, state_dict: dict | None = None) -> None:
    """``model``'s weights as mmengine's own ``save_checkpoint`` writes a training checkpoint (the layout of the
    model zoo's files before ``publish_model`` strips them): ``meta`` with ``dataset_meta`` holding numpy
    arrays, the config text and versions, ``state_dict``, ``optimizer`` (AdamW with its step state),
    ``param_schedulers`` and ``message_hub`` (HistoryBuffers of the training scalars)."""
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    src = state_dict if state_dict is not None else model.state_dict()
    weights = OrderedDict((k, v.detach().clone()) for k, v in src.items())
    weights._metadata = getattr(src, "_metadata", OrderedDict())   # what weights_to_cpu copies along
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)   # a step, so the optimizer holds state (the weights saved
    # are those taken before it)
    params = [p for p in model.parameters() if p.requires_grad][:3]
    sum(p.float().sum() for p in params).backward()
    opt.step()
    hub = MessageHub.get_instance(f"simhand-ckpt-{os.getpid()}-{id(model)}")
    for i in range(5):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", 4e-3)
    hub.update_info("epoch", 210)
    hub.update_info("iter", 1234)
    ckpt = {
        "meta": {"epoch": 210, "iter": 1234, "seed": 21, "experiment_name": "rtmpose-m_8xb256-210e_hand5-256x256",
                 "mmengine_version": "0.10.7", "time": "20230920_000000", "cfg": "model = dict(type='TopdownPoseEstimator')",
                 "dataset_meta": {"dataset_name": "hand5", "num_keypoints": 21,
                                  "sigmas": np.full(21, 0.025, np.float32),
                                  "keypoint_colors": np.zeros((21, 3), np.uint8),
                                  "skeleton_link_colors": np.ones((20, 3), np.int64),
                                  "flip_indices": list(range(21)), "dataset_keypoint_weights": np.ones(21),
                                  "weight": np.float64(1.5)}},
        "state_dict": weights_to_cpu(weights),
        "optimizer": opt.state_dict(),
        "param_schedulers": [{"base_values": [4e-3], "last_step": 1234, "_get_lr_called_within_step": False}],
        "message_hub": hub.state_dict(),
    }
    save_checkpoint(ckpt, path)
