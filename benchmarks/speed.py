"""Generation speed of each local model on this machine, so README speed claims can be rerun.

    python benchmarks/speed.py [--tokens 64] [--repeats 3] [--threads N] [NAME ...]

Each model is loaded once, warmed up with one short generation, then asked for
``--tokens`` greedy tokens ``--repeats`` times (``ignore_eos``-style: a fixed
continuation prompt that does not end early). Prints tokens/s per repeat as the
median and the range, plus the build's instruction sets (``llama_print_system_info``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from sale_graph.local import PRESETS
from sale_graph.model_files import model_path
from sale_graph.native_build import ensure_safe_build, parse_system_info, system_info

PROMPT = "Count from one to two hundred in words, separated by commas: one, two, three,"


def measure(name: str, tokens: int, repeats: int, threads: int) -> list[float]:
    from llama_cpp import Llama

    llama = Llama(model_path=str(model_path(name)), n_ctx=1024, n_threads=threads,
                  n_threads_batch=threads, verbose=False)
    llama.create_completion(PROMPT, max_tokens=4, temperature=0.0)  # warm-up
    rates = []
    for _ in range(repeats):
        llama.reset()
        prompt_tokens = llama.tokenize(PROMPT.encode())
        llama.eval(prompt_tokens)  # prefill, not timed
        started, made = time.perf_counter(), 0
        for _ in range(tokens):
            token = llama.sample(temp=0.0)
            llama.eval([token])
            made += 1
        rates.append(made / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(PRESETS["local-three"]))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    ensure_safe_build()
    enabled = [k for k, v in parse_system_info(system_info()).items() if v]
    print(f"llama.cpp build: {' '.join(enabled)}")
    print(f"{args.tokens} greedy tokens x {args.repeats}, {args.threads} threads")
    for name in args.names:
        rates = measure(name, args.tokens, args.repeats, args.threads)
        print(f"{name:<20} {statistics.median(rates):6.1f} tok/s "
              f"(range {min(rates):.1f}-{max(rates):.1f})", flush=True)


if __name__ == "__main__":
    main()
