"""Progress in words: one line per step of an auction, for terminals, servers and apps.

``sale run`` prints these lines, ``sale serve`` streams them as SSE comments, and an
app streaming the graph (``stream_mode="updates"``) can show the same with
:func:`describe_update`; under ``stream_mode="custom"`` each node writes its line
as ``{"sale": line}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sale_graph.calls import failure_kind


def describe_update(
    update: Mapping[str, Any], t0: float | None = None, details: bool = True
) -> str | None:
    """One human line for one step of the auction (an ``updates`` stream chunk), or None.

    ``t0`` (a ``time.time()``) prefixes the seconds since; ``details=False`` keeps a
    failure to its kind (``RuntimeError``, ``timeout``), for lines shown to strangers.
    """
    if len(update) != 1:
        return None
    (node, data), = update.items()
    data = data if isinstance(data, Mapping) else getattr(data, "update", None) or {}
    when = "" if t0 is None else f"[{time.time() - t0:6.1f}s] "
    if node == "open_auction":
        mode = data.get("mode")
        return f"{when}auction opened" + ("" if mode == "staged" else
                                           "; agents are writing bids")
    if node in ("bid", "refine"):
        for b in data.get("bids", []):
            kind = "refined bid" if node == "refine" else "bid"
            return f"{when}{kind} from {b['agent']}: {b['tokens']} tokens"
        return _dropped(data, when, details)
    if node == "vote":
        for v in data.get("votes", []):
            shown = v["score"] if v["score"] is not None else "dropped"
            return f"{when}{v['juror']} votes {shown} on {v['bid_id']}"
    if node == "score":
        return f"{when}bids scored"
    if node == "estimate":
        est = data.get("estimates") or {}
        shown = ", ".join(f"{a} p={e['p']:.2f} (n={e['n']:.1f})" for a, e in est.items())
        return f"{when}memory's success estimates: {shown or 'none'}"
    if node == "offer":
        for b in data.get("bids", []):
            if b.get("direct"):  # the last resort, or an agent memory alone accepts
                return f"{when}{data.get('stop') or b['agent'] + ' answers directly'}"
            return f"{when}bid from {b['agent']}: {b['tokens']} tokens"
        return _dropped(data, when, details)
    if node == "assess":
        for a in data.get("assessments", []):
            verdict = ("accepted to explore (too little evidence to trust the assessment)"
                       if a.get("explored") else "accepted" if a["accepted"] else "declined")
            return (f"{when}{a['agent']}'s bid: {assessed(a)} vs reserve "
                    f"{a['reserve']:.2f}: {verdict}")
    if node == "memory_retrieve":
        n = (data.get("retrieved") or {}).get("count", 0)
        return f"{when}memory: {n} similar past auctions retrieved"
    if node == "award":
        return f"{when}awarded to {(data.get('awarded') or {}).get('agent')}"
    if node == "execute":
        if not data.get("execution"):  # a rejected auction: nothing ran
            return None
        how = ("executed its plan" if (data.get("execution") or {}).get("with_plan", True)
               else "answered directly")
        return f"{when}{data.get('winner')} {how}"
    if node == "remember":
        status = ((data.get("auction") or {}).get("memory") or {}).get("write", "")
        if status == "ok":
            return f"{when}auction stored in memory"
        # the reason's detail (a path, a URL) goes to the audit's notes, not to this line,
        # which `sale serve` also streams to its clients
        return f"{when}auction not stored in memory ({failure_kind(status or 'unknown')})"
    return None


def _dropped(data: Mapping[str, Any], when: str, details: bool) -> str | None:
    """A bidder's step with no bid: the first agent that dropped out, and why."""
    for e in data.get("events", []):
        why = e["detail"] if details else failure_kind(e["detail"])
        return f"{when}{e['agent']} dropped out ({why})"
    return None


def assessed(a: dict[str, Any], short: bool = False) -> str:
    """An assessment: p(pass), and against the dearest agent the chance of no loss."""
    if "p_dearest" not in a:
        return f"{a['p_pass']:.2f}" if short else f"p(pass)={a['p_pass']:.2f}"
    if short:
        return f"{a['p_pass']:.2f} (no loss {a['assessed']:.2f})"
    return (f"p(pass)={a['p_pass']:.2f}, dearest's {a['p_dearest']:.2f}, "
            f"p(no loss)={a['assessed']:.2f}")
