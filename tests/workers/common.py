"""What every worker process shares: a scripted pool that logs its calls, a cheap embedder.

Workers are real processes so that a kill is a real kill and a shared memory is
shared across address spaces; the models stay scripted because these tests are
about orchestration, not about what a model says.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import Field

from sale_graph import Agent, Context, Weights
from sale_graph.memory import AuctionMemory
from tests.scripted import ScriptedChatModel, prompt_kind, votes_by_plan

DIMENSION = 384

# Plans carry their author's tag so a log line can say which bid a vote judged.
# With cost=1 and entropy=1 weights: mid is the provisional winner, small (cheaper)
# refines, and its refined plan wins whenever memory gave it a pair to learn from.
PLANS = {
    "small": "[small] parse add return",
    "mid": "[mid] parse inputs add them test return",
    "large": "[large] parse inputs validate types add them test edge cases return",
}
REFINED = "[small+] parse add test"
PRICES = {"small": 0.05, "mid": 0.16, "large": 0.36}
VOTES = {"[small+]": "5", "[large]": "3", "[mid]": "3", "[small]": "1"}
WEIGHTS = Weights(cost=1.0, entropy=1.0)
_TAG = re.compile(r"\[(small\+|small|mid|large)\]")


class HashEmbedder:
    """Deterministic bag-of-words vectors: similar texts share dimensions.

    Stands in for MiniLM where embeddings are not under test: loading the real model
    costs each worker process ~10 s of CPU on a small machine.
    """

    dimension = DIMENSION

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Return one unit vector per text."""
        out = []
        for text in texts:
            vec = [0.0] * DIMENSION
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % DIMENSION
                vec[index] += 1.0 if digest[4] & 1 else -1.0
            norm = math.sqrt(sum(x * x for x in vec))
            if norm == 0.0:
                vec[0], norm = 1.0, 1.0
            out.append([x / norm for x in vec])
        return out


def plan_tag(prompt: str) -> str:
    """Which bid a jury prompt is about (the tag of the plan under judgement)."""
    match = _TAG.search(prompt.split("<plan>", 1)[-1])
    return match.group(1) if match else "?"


class LoggedModel(ScriptedChatModel):
    """A scripted model that appends one line per call to a shared log file.

    Lines are written with a single ``write`` on an ``O_APPEND`` descriptor, so lines
    from concurrent processes never interleave and a SIGKILL loses none already written.
    """

    agent: str = ""
    log_path: str | None = None
    slow: dict[str, float] = Field(default_factory=dict)
    model_seconds: float = 0.0

    def _log(self, phase: str, kind: str, target: str) -> None:
        if not self.log_path:
            return
        line = f"{os.getpid()}\t{phase}\t{kind}\t{self.agent}\t{target}\n".encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None,
                         run_manager: Any = None, **kwargs: Any) -> Any:
        kind = prompt_kind(messages)
        prompt = "\n".join(str(m.content) for m in messages)
        target = plan_tag(prompt) if kind == "vote" else self.agent
        self._log("begin", kind, target)
        if self.slow.get(kind):
            await asyncio.sleep(self.slow[kind])
        result = await super()._agenerate(messages, stop, run_manager, **kwargs)
        self._log("end", kind, target)
        return result


def make_pool(log_path: str | None = None, slow: dict[str, dict[str, float]] | None = None,
              script: dict[str, dict[str, Any]] | None = None) -> list[Agent]:
    """The three-agent scripted market; ``slow`` delays some call kinds per agent."""
    pool = []
    for name, plan in PLANS.items():
        replies: dict[str, Any] = {"bid": plan, "vote": votes_by_plan(VOTES),
                                   "refine": REFINED, "execute": f"answer from {name}"}
        replies.update((script or {}).get(name, {}))
        model = LoggedModel(script=replies, entropy=1.0, agent=name, log_path=log_path,
                            slow=(slow or {}).get(name, {}))
        pool.append(Agent(name=name, model=model, price=PRICES[name]))
    return pool


def make_context(pool: list[Agent], url: str, collection: str, embedder: str,
                 **kw: Any) -> Context:
    """A Context on a Chroma server: the product path (``memory_url``) or a cheap embedder."""
    if embedder == "minilm":
        return Context(agents=pool, memory_url=url, collection=collection, weights=WEIGHTS,
                       **kw)
    memory = AuctionMemory.from_url(url, collection=collection, embedder=HashEmbedder())
    return Context(agents=pool, memory=memory, weights=WEIGHTS, **kw)


def parse_log(path: str) -> list[dict[str, str]]:
    """The call log as records (pid, phase, kind, agent, target)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 5:
                rows.append(dict(zip(("pid", "phase", "kind", "agent", "target"), parts,
                                     strict=True)))
    return rows
