"""An encoder prior for every encoder: the shipped one, else one measured once on this machine.

A memory too small to calibrate itself (one example per category, a mixed memory) is judged
by its encoder's prior (:mod:`rar_agent.openset.prior`). Only EfficientNet-Lite0's ships; any
other encoder (CLIP ViT-B-16, the default wherever its weights can be had) gets one measured
here, the first time a memory of it needs one: the 200 Fashion-MNIST garments shipped with
the package are encoded once (:func:`rar_agent.openset.fitting.reference_garments`), the
prior is fitted on them (:func:`rar_agent.openset.fitting.measure_prior`, the fit the shipped
priors come from) and stored in the data directory, ``<RAR_HOME>/priors/``, keyed by the
encoder's fingerprint. Later runs read it; a stored one that is unreadable or of another
version is measured again, never trusted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rar_agent.errors import unwritable_reason
from rar_agent.openset.fitting import (
    MEASURED_ON,
    RefSet,
    measure_prior,
    reference_garments,
    store_prior,
    stored_prior,
    unit,
)
from rar_agent.openset.prior import EncoderPrior, shipped_prior, use_measured

if TYPE_CHECKING:
    from rar_agent.encoders import ImageTextEncoder

__all__ = [
    "CAVEAT",
    "MEASURE_BATCH",
    "PRIOR_FOLDER",
    "ensure_prior",
    "known_prior",
    "measure_on_garments",
    "prior_dir",
]

logger = logging.getLogger(__name__)

PRIOR_FOLDER = "priors"
"""The folder of measured priors under the data directory (``RAR_HOME``)."""
MEASURE_BATCH = 50
"""Reference images encoded per call (progress is reported after each)."""
CAVEAT = (
    "measured on garments alone, it keeps to about half of ALPHA on garments so that other "
    "kinds of picture stay within ALPHA, as icons and emoji held out did for "
    "EfficientNet-Lite0; for this encoder no other kind was checked"
)
"""What a prior measured here cannot promise (said with it in every note)."""


def prior_dir(home: Path) -> Path:
    """Where measured priors live under the data directory ``home``."""
    return Path(home).expanduser() / PRIOR_FOLDER


_UNTRUSTED_TOLD: set[str] = set()
"""Why stored priors were not trusted, as this process has told it (each said once)."""


def known_prior(fingerprint: str, directory: Path | None) -> EncoderPrior | None:
    """The encoder's prior without measuring one: the shipped one, else the one stored in
    ``directory`` (made known to this process), else ``None`` (one stored but not trusted is
    logged, once a process, and left for :func:`ensure_prior` to measure again)."""
    shipped = shipped_prior(fingerprint)
    if shipped is not None or directory is None:
        return shipped
    prior, why = stored_prior(directory, fingerprint)
    if prior is None:
        if why is not None and why not in _UNTRUSTED_TOLD:
            _UNTRUSTED_TOLD.add(why)
            logger.warning("%s; it will be measured again", why)
        return None
    use_measured(prior)
    return prior


def ensure_prior(
    encoder: ImageTextEncoder,
    directory: Path,
    *,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EncoderPrior:
    """The encoder's prior: the shipped one (never measured), else the one stored in
    ``directory``, else one measured now on the garments shipped with the package (one pass
    over 200 small images), stored there (where it cannot be, ``announce`` is told and this
    process uses it all the same) and made known to this process.

    Args:
        encoder: The encoder (its fingerprint is the key).
        directory: Where measured priors are stored (:func:`prior_dir`).
        announce: Told once that the prior is being measured (default: a logged warning);
            why a stored one was not trusted is logged (:func:`known_prior`).
        progress: ``progress(done, total)`` over the reference images while they are encoded.

    Raises:
        ValueError: The encoder's vectors of the reference images give no finite prior.
    """
    known = known_prior(encoder.fingerprint, directory)
    if known is not None:
        return known
    name = encoder.fingerprint.rsplit(":", 1)[0]
    (announce or logger.warning)(
        f"measuring the encoder prior of {name} once on this machine (it ships none): one "
        "pass over the 200 Fashion-MNIST garments shipped with rar-agent, so that memories "
        "of one or two examples per category can reject unknown images; stored in "
        f"{directory}"
    )
    started = time.perf_counter()
    prior = measure_on_garments(encoder, progress)
    use_measured(prior)
    took = time.perf_counter() - started
    try:
        path = store_prior(directory, prior)
    except OSError as exc:  # a read-only data directory: this process still uses it
        (announce or logger.warning)(
            f"the encoder prior of {name} could not be stored in {directory} "
            f"({unwritable_reason(exc, directory)}): this run uses it, and the next one "
            "measures it again (a RAR_HOME you can write keeps it)"
        )
        return prior
    _UNTRUSTED_TOLD.clear()  # what is stored now is trusted: a later damage is told again
    logger.info("encoder prior of %s measured in %.1f s: %s", name, took, path)
    return prior


def measure_on_garments(
    encoder: ImageTextEncoder, progress: Callable[[int, int], None] | None = None
) -> EncoderPrior:
    """The encoder's prior measured on the garments shipped with the package (stored
    nowhere; :func:`ensure_prior` stores it): one pass of the encoder over the 200 images.

    Raises:
        ValueError: The encoder's vectors of them give no finite prior.
    """
    images, labels, _ = reference_garments()
    return measure_prior(
        RefSet.pool(
            "fashion (shipped reference garments)", _encode(encoder, images, progress), labels
        ),
        fingerprint=encoder.fingerprint,
        encoder=encoder.fingerprint.rsplit(":", 1)[0],
        measured_on=MEASURED_ON,
        caveat=CAVEAT,
    )


def _encode(
    encoder: ImageTextEncoder, images: np.ndarray, progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """The reference images' unit vectors (grey garments given to the encoder as RGB, as the
    evaluation encodes them)."""
    from PIL import Image

    rows = []
    for start in range(0, len(images), MEASURE_BATCH):
        batch = [Image.fromarray(a).convert("RGB") for a in images[start : start + MEASURE_BATCH]]
        rows.append(np.asarray(encoder.embed_images(batch), dtype=np.float64))
        if progress is not None:
            progress(start + len(batch), len(images))
    return unit(np.concatenate(rows))
