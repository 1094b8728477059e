"""Maintainer scripts: benchmarks, example encoders, fine-tuning data (not part of the package).

Importable from the repository root (``python -m scripts.bench``, ``--encoder
scripts.effnet_encoder:create``).
"""
