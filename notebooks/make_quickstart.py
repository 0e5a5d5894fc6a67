"""Regenerate 01_quickstart.ipynb from this script (keeps the notebook reviewable)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# sale_graph quickstart\n\n"
        "A strategy auction on real local models, offline. Every agent bids a short plan, "
        "the whole pool judges every plan 0-5, bids are scored *cost minus value*, cheaper "
        "losers refine their plan from an auction memory (Chroma) of past auctions, and the "
        "winner executes its plan.\n\n"
        "This notebook uses the two smallest embedded models (`local-small`) to stay fast on "
        "a laptop CPU; the default `pool=\"local\"` is Qwen2.5-Coder-0.5B and -1.5B, "
        "`\"local-three\"` all three."
    ),
    nbf.v4.new_code_cell(
        "import tempfile\n\n"
        "from sale_graph import AuctionMemory, Context, Weights, build_graph, graph\n\n"
        "memory_dir = tempfile.mkdtemp(prefix='sale-memory-')\n"
        "context = Context(pool='local-small', memory_path=memory_dir, max_bid_tokens=96,\n"
        "                  max_answer_tokens=192)\n"
        "print(graph.get_graph().draw_mermaid())"
    ),
    nbf.v4.new_markdown_cell(
        "## One auction\n`graph` is compiled; nodes are async, so use `ainvoke` "
        "(top-level `await` works in Jupyter)."
    ),
    nbf.v4.new_code_cell(
        "first = await graph.ainvoke(\n"
        "    {'task': 'Write a Python function is_palindrome(s) that ignores case and spaces.'},\n"
        "    context=context,\n"
        ")\n"
        "audit = first['auction']\n"
        "for bid in audit['bids']:\n"
        "    print(f\"{bid['agent']:20} round={bid['round']} tokens={bid['tokens']:4} \"\n"
        "          f\"entropy={bid['entropy']:.2f} jury={bid['jury_mean']} \"\n"
        "          f\"score={bid['score']:.3f}\")\n"
        "print('winner:', first['winner'])\n"
        "print(first['answer'][:600])"
    ),
    nbf.v4.new_markdown_cell(
        "## The audit record\nEvery number behind the decision, plus the auction's overhead "
        "versus the execution (tokens, dollars, seconds)."
    ),
    nbf.v4.new_code_cell(
        "assert audit['winner'] == first['winner']\n"
        "{phase: (v['seconds'], v['tokens']) for phase, v in audit['phases'].items()}, "
        "audit['totals']"
    ),
    nbf.v4.new_markdown_cell(
        "## Memory at work\nA similar task: the first auction is retrieved from memory, and "
        "agents cheaper than the provisional winner refine their bids from its "
        "(losing, winning) plans."
    ),
    nbf.v4.new_code_cell(
        "second = await graph.ainvoke(\n"
        "    {'task': 'Write a Python function is_anagram(a, b) that ignores case and spaces.'},\n"
        "    context=context,\n"
        ")\n"
        "a2 = second['auction']\n"
        "print('provisional winner:', a2['provisional_winner'], '| refiners:', a2['refiners'])\n"
        "print('retrieved:', a2['memory']['retrieved_auctions'], 'past auctions')\n"
        "print('final winner:', a2['winner'], '| refined bid won:', a2['refined_won'])"
    ),
    nbf.v4.new_markdown_cell(
        "Refinement only happens when the provisional winner is not the cheapest agent (an "
        "auction the smallest agent already won costs nothing extra). The memory itself is a "
        "Chroma collection with one record per auction, searchable by task similarity:"
    ),
    nbf.v4.new_code_cell(
        "memory = AuctionMemory.persistent(memory_dir)\n"
        "print('auctions stored:', memory.count())\n"
        "print('similar past auctions:')\n"
        "for past in memory.similar('check whether a string reads the same backwards', k=2):\n"
        "    print(f'  {past.similarity:.2f}  winner={past.winner:20} {past.task}')"
    ),
    nbf.v4.new_markdown_cell(
        "## Weights\nThe default weights are uncalibrated; `sale fit` fits them on your workload. "
        "A heavy price weight hands auctions to the cheapest agent:"
    ),
    nbf.v4.new_code_cell(
        "frugal = Context(pool='local-small', memory_path=memory_dir, refine=False,\n"
        "                 remember=False, max_bid_tokens=64, max_answer_tokens=64,\n"
        "                 weights=Weights(cost=1000.0, entropy=0.0))\n"
        "cheap = await graph.ainvoke({'task': 'Name three prime numbers.'}, context=frugal)\n"
        "cheap['winner']"
    ),
    nbf.v4.new_markdown_cell(
        "## As a subgraph\n`build_graph()` returns the uncompiled graph: compile it with your "
        "own checkpointer, or call it from a node of a larger app with a different state."
    ),
    nbf.v4.new_code_cell(
        "from langgraph.checkpoint.memory import InMemorySaver\n"
        "from langgraph.graph import END, START, StateGraph\n"
        "from typing_extensions import TypedDict\n\n"
        "auction = build_graph(frugal).compile(checkpointer=InMemorySaver())\n\n"
        "class AppState(TypedDict, total=False):\n"
        "    question: str\n"
        "    solved_by: str\n"
        "    reply: str\n\n"
        "async def delegate(state: AppState) -> AppState:\n"
        "    out = await auction.ainvoke({'task': state['question']},\n"
        "                                config={'configurable': {'thread_id': 'demo'}})\n"
        "    return {'solved_by': out['winner'], 'reply': out['answer']}\n\n"
        "app = StateGraph(AppState)\n"
        "app.add_node('delegate', delegate)\n"
        "app.add_edge(START, 'delegate')\n"
        "app.add_edge('delegate', END)\n"
        "result = await app.compile().ainvoke({'question': 'What is 12 * 12?'})\n"
        "result['solved_by'], result['reply'][:200]"
    ),
]

nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("01_quickstart.ipynb"))
