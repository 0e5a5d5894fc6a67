"""Regenerate 02_explore_results.ipynb from this script (keeps the notebook reviewable)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell(
        "# Exploring a benchmark run\n\n"
        "A committed run directory holds `bank.jsonl.gz`: every model call, outcome, audit and "
        "result of the run. Everything below is rebuilt from it in seconds, with no model "
        "loaded: the report's tables and plots, the paired comparisons against the largest "
        "agent, and one auction's audit with what its memory retrieved.\n\n"
        "`RUN_DIR` picks the run: `benchmarks/results/v2` once its committed results hold "
        "auctions, else `benchmarks/results/full`. Set it to any run directory of your own."
    ),
    nbf.v4.new_code_cell(
        "import json\n"
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "import sale_graph\n\n"
        "RUN_DIR = None  # e.g. Path('benchmarks/results/full')\n\n"
        "if RUN_DIR is None:\n"
        "    here = Path.cwd().resolve()\n"
        "    roots = [here, *here.parents, Path(sale_graph.__file__).resolve().parents[1]]\n"
        "    results = next(p / 'benchmarks' / 'results' for p in roots\n"
        "                   if (p / 'benchmarks' / 'results').is_dir())\n"
        "    v2 = results / 'v2'\n"
        "    done = v2 / 'results.json'\n"
        "    records = json.loads(done.read_text()).get('records', []) if done.exists() else []\n"
        "    auctions = any(r.get('tokens_auction') for r in records)\n"
        "    RUN_DIR = v2 if auctions else results / 'full'\n"
        "EXPORT = Path(RUN_DIR) / 'bank.jsonl.gz'\n"
        "print('run:', RUN_DIR)"
    ),
    nbf.v4.new_markdown_cell(
        "## The report, rebuilt\n`report_from_export` reads the export into a scratch "
        "database and writes `results.json`, `results.md` and the plots; here into a "
        "temporary directory, so the committed run stays untouched."
    ),
    nbf.v4.new_code_cell(
        "import json\n\n"
        "from IPython.display import Image, Markdown, display\n\n"
        "from sale_graph.bench.runner import report_from_export\n\n"
        "out_dir = Path(tempfile.mkdtemp(prefix='sale-report-'))\n"
        "paths = report_from_export(EXPORT, out_dir)\n"
        "report = json.loads(paths['json'].read_text())\n"
        "print('methods:', ', '.join(report['summary']))\n"
        "display(Image(filename=str(paths['pareto'])))"
    ),
    nbf.v4.new_markdown_cell(
        "## Learning along the task order\nFor methods run over several task orders: rolling "
        "pass@1, cost and each agent's win share against tasks seen, mean over orders. "
        "Memory starts empty in every order, so a method that learns rises to the right."
    ),
    nbf.v4.new_code_cell("display(Image(filename=str(paths['learning'])))"),
    nbf.v4.new_markdown_cell(
        "A curve's first and last windows hold different tasks. Each order puts a task at a "
        "random place, so most tasks are met early in one order and late in another: the "
        "same task met in an order's second half against itself met in its first half says "
        "whether memory helped, with the task's difficulty cancelled."
    ),
    nbf.v4.new_code_cell(
        "for method, e in report.get('learning_effect', {}).items():\n"
        "    d, r = e['pass_diff'], e['cost_ratio']\n"
        "    print(f\"{method} ({e['n_orders']} orders, {e['n_tasks']} tasks): pass@1 late - \"\n"
        "          f\"early {100 * d['estimate']:+.1f} [{100 * d['lo']:+.1f}, \"\n"
        "          f\"{100 * d['hi']:+.1f}]{' (within noise)' if d['within_noise'] else ''}; \"\n"
        "          f\"cost late / early {r['estimate']:.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]\")"
    ),
    nbf.v4.new_markdown_cell(
        "## Can this benchmark tell?\nEach method against the largest agent on the *same* "
        "tasks, resampled together (95% bootstrap intervals over tasks). A difference whose "
        "interval holds 0, or a cost ratio whose interval holds 1, is within noise."
    ),
    nbf.v4.new_code_cell(
        "def noise(stat):\n"
        "    return ' (within noise)' if stat['within_noise'] else ''\n\n"
        "rows = ['| method | against | pass@1 diff (points) | 95% CI | cost ratio | 95% CI |',\n"
        "        '|---|---|---|---|---|---|']\n"
        "for ref, methods in report['paired'].items():\n"
        "    for method, c in methods.items():\n"
        "        d, r = c['pass_diff'], c['cost_ratio']\n"
        "        rows.append(\n"
        "            f\"| {method} | {ref} | {100 * d['estimate']:+.1f}{noise(d)} \"\n"
        "            f\"| [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] \"\n"
        "            f\"| {r['estimate']:.2f}{noise(r)} | [{r['lo']:.2f}, {r['hi']:.2f}] |\")\n"
        "display(Markdown('\\n'.join(rows)))"
    ),
    nbf.v4.new_markdown_cell(
        "Break-even: the execution length (tokens) beyond which each auction method's own "
        "calls are paid back by cheaper executions (`None`: never, routing saves nothing), "
        "with its 95% bootstrap interval over tasks."
    ),
    nbf.v4.new_code_cell(
        "def tokens(n):\n"
        "    return 'never' if n is None else f'{n:,.0f} tokens'\n\n"
        "for ref, methods in report['break_even'].items():\n"
        "    for method, b in methods.items():\n"
        "        lstar, ci = b['break_even_tokens'], b.get('break_even_interval')\n"
        "        span = f\" [{tokens(ci['lo'])}, {tokens(ci['hi'])}]\" if lstar and ci else ''\n"
        "        print(f\"{method:24} vs {ref}: rho {b['rho']:.2f}, \"\n"
        "              f\"break-even {tokens(lstar) if lstar != 0 else 'any length'}{span}\")"
    ),
    nbf.v4.new_markdown_cell(
        "## One auction, step by step\nThe bank holds every SALE auction's audit. Take the "
        "first auction, in task order, where memory retrieved past auctions and cheaper "
        "agents refined their bids."
    ),
    nbf.v4.new_code_cell(
        "from sale_graph.bench.bank import OutcomeBank\n\n"
        "bank = OutcomeBank.from_export(EXPORT, out_dir / 'bank.sqlite')\n"
        "results = bank.records('result')\n"
        "tasks = {t['id']: t for t in bank.get('meta', 'tasks')['tasks']}\n"
        "rows = sorted(results.values(), key=lambda r: (r['record']['method'],\n"
        "              r['record']['order'], r['record']['position']))\n"
        "row = next(r for r in rows\n"
        "           if r['audit']['memory'].get('retrieved_ids') and r['audit']['refiners'])\n"
        "audit, record = row['audit'], row['record']\n"
        "print(f\"{record['method']}, order {record['order']}, position {record['position']}: \"\n"
        "      f\"{record['task_id']} ({tasks[record['task_id']]['domain']}, \"\n"
        "      f\"{tasks[record['task_id']]['bin']})\")\n"
        "print(audit['task'][:400])"
    ),
    nbf.v4.new_markdown_cell(
        "Every bid with its score terms: cost (price x bid length, weighted), value "
        "(entropy and jury terms), score = cost - value, lowest wins. Round 1 bids are the "
        "refinements written after reading memory."
    ),
    nbf.v4.new_code_cell(
        "print(f\"{'agent':20} round tokens entropy   jury   cost  value  score\")\n"
        "for b in audit['bids']:\n"
        "    print(f\"{b['agent']:20} {b['round']:5} {b['tokens']:6} {b['entropy'] or 0:7.2f} \"\n"
        "          f\"{b['jury_mean'] or 0:6.2f} {b['cost']:6.3f} {b['value']:6.3f} \"\n"
        "          f\"{b['score']:6.3f}\")\n"
        "print('weights:', audit['weights'])\n"
        "print('provisional winner:', audit['provisional_winner'],\n"
        "      '| refiners:', audit['refiners'])\n"
        "print('winner:', audit['winner'], '| refined bid won:', audit['refined_won'],\n"
        "      '| passed:', record['passed'])\n"
        "audit['totals']"
    ),
    nbf.v4.new_markdown_cell(
        "## What memory retrieved\n`memory.retrieved_ids` names the past auctions (of the "
        "same order) the refiners read: their tasks, and who won them."
    ),
    nbf.v4.new_code_cell(
        "by_auction = {r['audit']['auction_id']: r for r in results.values()}\n"
        "print('retrieved:', audit['memory']['retrieved_ids'])\n"
        "for auction_id in audit['memory']['retrieved_ids']:\n"
        "    past = by_auction[auction_id]\n"
        "    task = tasks[past['record']['task_id']]\n"
        "    lines = past['audit']['task'].strip().splitlines()\n"
        "    # a coding task's signature says more than its instructions; else the first line\n"
        "    head = next((x for x in lines if x.lstrip().startswith('def ')), lines[0])[:100]\n"
        "    print(f\"  {auction_id:12} {task['id']:28} won by {past['audit']['winner']:20} \"\n"
        "          f\"passed={past['record']['passed']!s:5} | {head.strip()}\")"
    ),
    nbf.v4.new_markdown_cell(
        "## One staged auction\nThe staged auction offers the task cheapest first and stops "
        "at the first bid whose assessed chance of passing clears the agent's reserve. Its "
        "audit says who was asked, in what order, each assessment with its signals "
        "(memory's success estimate and its evidence, entropy, length), and why it stopped. "
        "Runs made before the staged auction existed have none."
    ),
    nbf.v4.new_code_cell(
        "staged = [r for r in rows if r['audit'].get('mode') == 'staged']\n"
        "if not staged:\n"
        "    print('no staged auctions in', RUN_DIR)\n"
        "else:\n"
        "    # one where a cheaper agent was assessed, if any: that is where the mechanism acts\n"
        "    row = next((r for r in staged if r['audit'].get('assessments')), staged[0])\n"
        "    audit, record = row['audit'], row['record']\n"
        "    where = f\"order {record['order']}, position {record['position']}\"\n"
        "    print(f\"{record['method']}, {where}: \"\n"
        "          f\"{record['task_id']} -> {audit['winner']}, passed={record['passed']}\")\n"
        "    print('offered:', audit['offered'])\n"
        "    for a in audit['assessments']:\n"
        "        # against the dearest agent, the value weighed is the chance of no loss\n"
        "        value = a.get('assessed', a['p_pass'])\n"
        "        print(f\"  {a['agent']:20} p(pass) {a['p_pass']:.2f} assessed {value:.2f} \"\n"
        "              f\"reserve {a['reserve']:.2f} accepted={a['accepted']}\")\n"
        "        print('    signals:', a['signals'])\n"
        "    print('estimates:', audit.get('estimates'))\n"
        "    print('stop:', audit['stop'])\n"
        "bank.close()"
    ),
    nbf.v4.new_markdown_cell(
        "## Pools side by side\n`sale compare` sets runs of different pools on the same "
        "tasks against the first run's largest agent (`benchmarks/results/pools.json`, once "
        "the two-agent run is committed)."
    ),
    nbf.v4.new_code_cell(
        "pools = Path(RUN_DIR).parent / 'pools.json'\n"
        "if pools.exists():\n"
        "    comparison = json.loads(pools.read_text())\n"
        "    for pool, verdict in comparison['verdicts'].items():\n"
        "        print(pool, '->', verdict and (verdict['method'],\n"
        "                                       round(verdict['cost_ratio']['estimate'], 2)))\n"
        "else:\n"
        "    print('no pool comparison committed yet')"
    ),
]

nb = nbf.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).with_name("02_explore_results.ipynb"))
