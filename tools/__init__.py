"""Maintainer tools: benchmarks, the LoRA fine-tuning script, architecture metrics (not part
of the package).

Importable from the repository root (``python -m tools.bench``).
"""
