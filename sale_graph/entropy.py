"""Mean per-token entropy of a bid: the H(s) term of a bid's value.

SALE rewards plans whose tokens the writing model was *uncertain* about (denser,
less boilerplate). Two ways to get it, depending on what a backend exposes:

* exact: the full next-token distribution of every generated token (the local
  llama.cpp backend sees the logits) -> Shannon entropy in nats, averaged;
* approximate: an OpenAI-compatible API returns only the top-k log-probabilities
  of each token. We renormalise those k probabilities to sum to one and take
  their entropy. This under-estimates the true entropy (the tail is dropped) and
  is bounded by ln(k); it is comparable between agents only when they share k.

A chat model reports the value through ``AIMessage.response_metadata``:
``mean_token_entropy`` (float) plus ``entropy_method`` when it computed the value
itself, or OpenAI-style ``logprobs`` that we reduce here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

EXACT = "full-vocabulary"
TOPK = "top-k-renormalised"


def logits_entropy(logits: np.ndarray) -> float:
    """Shannon entropy (nats) of softmax(logits) at temperature 1."""
    x = np.asarray(logits, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    x = x - x.max()
    p = np.exp(x)
    z = p.sum()
    p /= z
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def topk_entropy(logprobs: Iterable[float]) -> float:
    """Entropy (nats) of the top-k distribution renormalised to sum to one."""
    lp = np.array([v for v in logprobs if v is not None and math.isfinite(v)], dtype=np.float64)
    if lp.size == 0:
        return 0.0
    p = np.exp(lp - lp.max())
    p /= p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def _openai_token_entropies(content: Sequence[Mapping[str, Any]]) -> list[float]:
    values = []
    for token in content:
        top = token.get("top_logprobs") or []
        if top:
            values.append(topk_entropy(t.get("logprob") for t in top))
    return values


def message_entropy(metadata: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
    """Return (mean token entropy, method) from a chat reply's response_metadata.

    (None, None) when the backend gives neither exact entropy nor top-k logprobs;
    the scorer then counts the entropy term as 0 and the audit says so.
    """
    if not metadata:
        return None, None
    if metadata.get("mean_token_entropy") is not None:
        value = _entropy_value(metadata["mean_token_entropy"])
        return (None, None) if value is None else (value, str(metadata.get("entropy_method",
                                                                            EXACT)))
    logprobs = metadata.get("logprobs")
    if isinstance(logprobs, Mapping):
        values = _openai_token_entropies(logprobs.get("content") or [])
        value = _entropy_value(np.mean(values)) if values else None
        if value is not None:
            return value, TOPK
    return None, None


def _entropy_value(raw: Any) -> float | None:
    """An entropy is a finite number >= 0; anything else (NaN, inf, text) counts as none.

    A NaN would make the bid's score NaN, and a NaN wins every comparison-based choice.
    """
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
