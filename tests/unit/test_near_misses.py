"""One near-miss hint for every name a user may mistype: labels, encoders, settings."""

from __future__ import annotations

from rar_agent.cli.memory import _no_such_label
from rar_agent.errors import did_you_mean, near_misses


def test_several_near_misses_of_a_label_read_as_one_question() -> None:
    message = _no_such_label("Betta", "pets", {"beta": 2, "betas": 1, "gamma": 3})
    # it read "(did you mean 'beta', 'betas'?)"; the encoder's hint joined its names with "or"
    assert "(did you mean 'beta' or 'betas'?)" in message, message


def test_near_misses_ignore_letter_case_and_keep_the_known_spelling() -> None:
    assert near_misses(" vit-b-16 ", ["ViT-B-16", "RN50"], cutoff=0.8) == ["ViT-B-16"]
    assert did_you_mean("vit-b-16", ["ViT-B-16"], quote=False) == " (did you mean ViT-B-16?)"
    assert did_you_mean("zebra", ["ViT-B-16"]) == ""
    assert did_you_mean("cat", ["cats", "Cat", "cow"], most=2) == " (did you mean 'Cat' or 'cats'?)"
