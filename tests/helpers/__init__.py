"""Test helpers shared by the whole suite (tiny random models built offline)."""
