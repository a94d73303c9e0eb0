"""Contrastive pre-training (SPEC §3): augmentations, model, losses, optimiser, Ray Data input, Ray Train loop.

Data flow: pairs (Parquet) -> ``data`` (Ray Dataset: read units, source-balanced resampling, ``augment`` on
CPU) -> ``loop`` (one process per worker: ``model`` + ``losses`` + ``optim``, ``checkpoint`` every N steps)
-> ``output/trunk.pt``. ``run`` is the driver that the job calls.

Evaluation builds on the same toolbox: the trunk (``trunk``), the input normalisation
(``augment.normalize_imagenet``), the optimiser and schedule (``optim``), the checkpoint format
(``checkpoint``) and the loss curve (``metrics``).
"""
