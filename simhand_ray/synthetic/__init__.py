"""Synthetic hand videos with ground-truth 3D pose: a kinematic hand model (hand_model), shaded rendering
(render, background), smooth motion (motion), video + sidecar labels (video, labels), FreiHAND-format
export (freihand_export) and contact sheets (montage)."""
