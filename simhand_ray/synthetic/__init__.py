"""Synthetic hand videos with ground-truth 3D pose: a kinematic hand model (hand_model), shaded rendering
(render, background), smooth motion (motion), video + sidecar labels (video; their format is
``mining.labelers.sidecar_labels``, which the groundtruth labeler reads), FreiHAND-format export (freihand_export)
and contact sheets (montage). ``SynthConfig`` is in ``simhand_ray.config``."""
