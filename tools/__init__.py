"""Maintainer scripts: benchmarks and the LoRA fine-tuning script (not part of the package).

Importable from the repository root (``python -m tools.bench``).
"""
