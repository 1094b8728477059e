"""Ingestion: class names, image folders, manifests, precomputed vectors and an encoder's
built-in vocabulary turned into memory entries (decode, encode, batch, write).

The layer above :mod:`rar_agent.memory` (which stores vectors and knows nothing of images
or encoders) and :mod:`rar_agent.encoders`, below retrieval. Modules: ``builders`` (names,
images, folders, manifests), ``batches`` (one batch read, hashed and decoded in a background
thread), ``from_vectors`` (``.npy`` vectors + labels), ``vocabulary`` (an encoder's
built-in classes), ``encoder`` (binding an encoder to a memory; the encoder for a memory).
"""

from rar_agent.ingest.builders import (
    IMAGE_EXTENSIONS,
    BuildReport,
    Progress,
    add_class_names,
    add_images,
    build_from_folder,
    build_from_manifest,
    iter_image_folder,
    iter_manifest,
)
from rar_agent.ingest.encoder import bind_memory, memory_encoder

__all__ = [
    "IMAGE_EXTENSIONS",
    "BuildReport",
    "Progress",
    "add_class_names",
    "add_images",
    "bind_memory",
    "build_from_folder",
    "build_from_manifest",
    "iter_image_folder",
    "iter_manifest",
    "memory_encoder",
]
