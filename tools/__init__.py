"""Maintainer scripts: benchmarks, example encoders, fine-tuning data (not part of the package).

Importable from the repository root (``python -m tools.bench``, ``--encoder
tools.effnet_encoder:create``).
"""
