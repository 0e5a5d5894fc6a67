"""The llama.cpp build guard and the install self-test.

The guard must refuse a build that would crash (AMX, or instructions the CPU
lacks) with a clear error instead of a segfault; the installed build must pass
it on this machine; the self-test must name a model whose child process crashes.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest
from langchain_core.messages import HumanMessage

from sale_graph import native_build, selftest
from sale_graph.errors import ModelFileError, UnsafeBuildError
from sale_graph.local import LlamaCppChatModel
from sale_graph.model_files import model_path

# As printed by llama-cpp-python 0.3.36 built with GGML_NATIVE=ON on a Sapphire Rapids Xeon.
AMX_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
PORTABLE_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
AVX2_CPU = {"sse3", "avx", "avx2", "f16c", "fma", "bmi2"}
AMX_CPU = AVX2_CPU | {"avx512f", "avx512_vbmi", "avx512_vnni", "avx512_bf16", "amx_tile",
                      "amx_int8"}


def test_parse_system_info_reads_each_feature():
    parsed = native_build.parse_system_info(AMX_INFO)
    assert parsed["AMX_INT8"] is True and parsed["AVX2"] is True
    assert native_build.parse_system_info(PORTABLE_INFO).get("AMX_INT8") is None


def test_an_amx_build_is_refused_even_on_an_amx_cpu():
    with pytest.raises(UnsafeBuildError) as err:
        native_build.check(AMX_INFO, AMX_CPU, env={})
    message = str(err.value)
    assert "AMX_INT8" in message and "SALE_LLAMA_REBUILD=1 bash scripts/install.sh" in message
    assert isinstance(err.value, ModelFileError)  # callers that handle model errors see it


def test_instructions_the_cpu_lacks_are_refused():
    with pytest.raises(UnsafeBuildError, match="avx512f"):
        native_build.check(AMX_INFO.replace("AMX_INT8 = 1", "AMX_INT8 = 0"), AVX2_CPU, env={})


def test_the_portable_build_passes_on_an_amx_cpu_and_an_avx2_cpu():
    native_build.check(PORTABLE_INFO, AMX_CPU, env={})
    native_build.check(PORTABLE_INFO, AVX2_CPU, env={})
    native_build.check(PORTABLE_INFO, None, env={})  # flags unreadable: only AMX is judged


def test_the_override_trusts_a_build():
    native_build.check(AMX_INFO, AMX_CPU, env={native_build.TRUST_ENV: "1"})


def test_the_installed_build_has_no_amx_and_fits_this_cpu():
    info = native_build.system_info()
    parsed = native_build.parse_system_info(info)
    assert parsed, info  # the report was readable
    assert not any(parsed.get(name) for name in ("AMX_INT8", "AMX_TILE", "AMX_BF16")), info
    assert native_build.problems(info, native_build.cpu_flags()) == []


def test_a_local_model_refuses_to_load_on_an_amx_build(monkeypatch):
    monkeypatch.delenv(native_build.TRUST_ENV, raising=False)
    monkeypatch.setattr(native_build, "system_info", lambda: AMX_INFO)
    native_build._checked_once.cache_clear()
    try:
        model = LlamaCppChatModel(model_path=str(model_path("smollm2-135m")),
                                  model_name="guard-probe", n_ctx=256, max_tokens=4)
        with pytest.raises(UnsafeBuildError, match="AMX"):
            model.invoke([HumanMessage("hi")])
    finally:
        native_build._checked_once.cache_clear()


@pytest.mark.integration
def test_selftest_generates_with_the_smallest_model():
    outcome = selftest.run_one("smollm2-135m", timeout=120)
    assert outcome.ok, outcome.detail
    assert "tokens" in outcome.detail


def test_selftest_names_a_model_whose_child_segfaults(tmp_path, monkeypatch):
    crasher = tmp_path / "python"
    crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crasher.chmod(crasher.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(crasher))
    outcome = selftest.run_one("qwen2.5-coder-1.5b", timeout=30)
    assert not outcome.ok
    assert "SIGSEGV" in outcome.detail and "SALE_LLAMA_REBUILD=1" in outcome.detail


def test_selftest_reports_a_hang(tmp_path, monkeypatch):
    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(sleeper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(sleeper))
    outcome = selftest.run_one("smollm2-135m", timeout=1)
    assert not outcome.ok and "no answer within 1 s" in outcome.detail


def test_selftest_reports_an_unknown_model():
    outcome = selftest.run_one("no-such-model", timeout=120)
    assert not outcome.ok and "failed" in outcome.detail
    assert os.environ.get(native_build.TRUST_ENV) != "1"  # the suite runs with the guard on
