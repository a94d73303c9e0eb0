"""simhand-ray: SiMHand (ICLR 2025) mining and contrastive pre-training for 3D hand pose, on Ray."""

__version__ = "0.1.0"
