"""Downstream evaluation (SPEC §4): dataset readers, 3D pose metrics, fine-tuning a pre-trained trunk for 3D
hand pose, and a retrieval probe that needs no 3D labels.
"""
