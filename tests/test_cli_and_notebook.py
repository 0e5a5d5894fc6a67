"""The `sale` command and the quickstart notebook, on the real local models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def sale(*args: str, memory: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SALE_MEMORY_PATH": str(memory)}
    return subprocess.run([sys.executable, "-m", "sale_graph.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def test_sale_run_prints_table_progress_and_answer(tmp_path):
    res = sale("run", "Write a Python function double(x) that returns 2*x.", "--pool",
               "local-small", memory=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bid from smollm2-135m" in res.stderr and "votes" in res.stderr
    out = res.stdout
    assert out.splitlines()[0].split()[:3] == ["agent", "round", "$/Mtok"]
    assert "<==" in out and "answer:" in out and "winner:" in out
    assert "refined: nobody)" in out  # empty memory: nobody had anything to refine from

    res = sale("run", "Write a Python function triple(x).", "--pool", "local-small", "--json",
               "--no-refine", memory=tmp_path)
    record = json.loads(res.stdout)
    assert record["winner"] == record["auction"]["winner"]

    stats = json.loads(sale("memory", "stats", memory=tmp_path).stdout)
    assert stats["auctions"] == 2
    found = sale("memory", "search", "function that doubles a number", "-k", "1",
                 memory=tmp_path)
    assert found.returncode == 0 and "double" in found.stdout


def test_sale_run_rejects_empty_task(tmp_path):
    res = sale("run", "  ", "--pool", "local-small", memory=tmp_path)
    assert res.returncode == 2 and "task is empty" in res.stderr


def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "winner:" in text and "auctions stored: 2" in text
    similar = text.split("similar past auctions:", 1)[1]
    assert "is_palindrome" in similar.splitlines()[1]  # the closest one is the palindrome task


def test_explore_notebook_rebuilds_a_committed_run_without_models(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's package, not another one
    nb = nbformat.read(ROOT / "notebooks" / "02_explore_results.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "run:" in text and "retrieved:" in text and "winner:" in text
    # the staged walkthrough shows a staged audit, or says the run has none
    assert "offered:" in text or "no staged auctions in" in text
    assert "no pool comparison committed yet" in text or " -> " in text
    assert "orders, " in text and "pass@1 late - early" in text  # each task against itself
    assert "break-even " in text and " tokens [" in text  # with its interval over tasks
    assert "never tokens" not in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| method | against | pass@1 diff (points)" in shown
