"""The llama.cpp build runs on any host: no AMX in the CPU library, the safe fast paths
kept, AVX-512 only where it really runs, and a crash in a child process becomes a
message with the rebuild command.

Our machines have no AMX, so the crash itself cannot happen here; what can be seen
here is its cause (the instructions in the built library) and the handling of a real
SIGILL, raised by running an AMX instruction that this kernel refuses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import cci

from cci_local import buildflags
from cci_local.llm import BackendError, cpucheck

AMX_FLAGS = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512cd",
             "avx512vl", "avx512dq", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16"}
AMX_SOURCE = """#include <immintrin.h>
int main(void) { _tile_zero(4); _tile_release(); return 0; }
"""


def disassemble(path) -> str:
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed: apt-get install binutils")
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                          text=True, check=True).stdout


def amx_in(path) -> list[str]:
    try:
        return buildflags.amx_instructions(path)
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def amx_program(tmp_path_factory):
    """A real program using AMX: the instruction the CEO's host crashed on."""
    folder = tmp_path_factory.mktemp("amx")
    (folder / "amx.c").write_text(AMX_SOURCE)
    binary = folder / "amx"
    subprocess.run(["cc", "-O1", "-mamx-tile", str(folder / "amx.c"), "-o", str(binary)],
                   check=True)
    return binary


def test_the_installed_cpu_library_holds_no_amx_and_keeps_avx2_fma(amx_program):
    libraries = sorted(cpucheck.lib_dir().glob("libggml-cpu*.so*"))
    assert libraries, f"no libggml-cpu in {cpucheck.lib_dir()}"
    found = amx_in(libraries[0])
    assert not found, f"AMX instructions in {libraries[0]}: {found}"
    code = disassemble(libraries[0])
    assert re.search(r"\bvfmadd\w+\s+%ymm", code), "no AVX2/FMA code: the fast path is gone"
    assert "vcvtph2ps" in code  # F16C
    # the detector finds AMX where there is some: this test can fail
    assert "tilezero" in amx_in(amx_program)


def test_default_build_is_not_native_and_turns_amx_off():
    ran = []
    args = buildflags.default_args("x86_64", AMX_FLAGS, run_probe=lambda o: ran.append(o) or True)
    assert "-DGGML_NATIVE=OFF" in args
    for option in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
        assert f"-DGGML_{option}=ON" in args
    for option in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{option}=OFF" in args
    assert "-DGGML_AVX512=ON" in args and "-DGGML_AVX512_BF16=ON" in args
    assert "-DGGML_AVX512_VBMI=OFF" in args  # not advertised: not even probed
    assert "GGML_AVX512_VBMI" not in ran and "GGML_AVX512" in ran
    # advertised but refused (the probe program dies): off
    refused = buildflags.default_args("x86_64", AMX_FLAGS, run_probe=lambda o: False)
    assert "-DGGML_AVX512=OFF" in refused and "-DGGML_AVX512_VNNI=OFF" in refused
    # an old CPU: the safe paths it lacks are off too
    old = buildflags.default_args("x86_64", {"avx"}, run_probe=lambda o: True)
    assert "-DGGML_AVX=ON" in old and "-DGGML_AVX2=OFF" in old
    # Apple silicon and aarch64 keep the native build
    assert buildflags.default_args("arm64", set()) == ["-DLLAVA_BUILD=OFF"]


def test_the_users_cmake_args_win():
    args = buildflags.cmake_args("-DGGML_CUDA=ON -DGGML_NATIVE=ON", machine="x86_64",
                                 flags={"avx", "avx2"}, run_probe=lambda o: False)
    parts = args.split()
    assert parts[-2:] == ["-DGGML_CUDA=ON", "-DGGML_NATIVE=ON"]  # last: CMake keeps these
    assert parts.index("-DGGML_NATIVE=OFF") < parts.index("-DGGML_NATIVE=ON")
    command = buildflags.rebuild_command("/venv/bin/python", "0.3.36")
    assert "--no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36" in command
    assert command.startswith("CMAKE_ARGS='-DLLAVA_BUILD=OFF")


def test_the_probe_refuses_an_instruction_the_kernel_refuses():
    # AMX needs the kernel's permission (arch_prctl) even on AMX hardware; without it,
    # as here, the instruction raises SIGILL. The probe must say no, not crash.
    buildflags._PROBES["AMX"] = ("-mamx-tile", "_tile_zero(4); _tile_release(); return 0;")
    try:
        assert buildflags.probe("AMX") is False
    finally:
        del buildflags._PROBES["AMX"]
    flags = buildflags.cpu_flags()
    if {"avx2", "fma"} <= flags:  # a program using what the flags say runs
        buildflags._PROBES["AVX2"] = ("-mavx2 -mfma", """
            volatile float one = 1.0f;
            __m256 x = _mm256_fmadd_ps(_mm256_set1_ps(one), _mm256_set1_ps(one),
                                       _mm256_set1_ps(one));
            float out[8]; _mm256_storeu_ps(out, x);
            return out[0] == 2.0f ? 0 : 1;""")
        try:
            assert buildflags.probe("AVX2") is True
        finally:
            del buildflags._PROBES["AVX2"]


def test_a_crash_in_the_child_is_named_with_the_rebuild_command(amx_program):
    result = cpucheck.probe([str(amx_program)])
    assert not result.ok and result.signal == "SIGILL"
    assert result.detail.startswith(
        "this llama.cpp build uses a CPU instruction this machine refuses (SIGILL")
    assert "CMAKE_ARGS=" in result.detail and "--force-reinstall" in result.detail
    real = cpucheck.probe()  # the embedded model, decoded for real in a child process
    assert real.ok and "decoded a" in real.detail, real.detail


def test_the_first_model_load_checks_once_and_remembers(tmp_path, monkeypatch, amx_program):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpucheck, "_checked", False)
    memory = tmp_path / "cci-local" / "cpu-check.json"
    with pytest.raises(BackendError, match="CPU instruction this machine refuses"):
        cpucheck.ensure([str(amx_program)])
    remembered = json.loads(memory.read_text())
    assert list(remembered) == [cpucheck.build_key()]
    assert remembered[cpucheck.build_key()]["ok"] is False
    # remembered for this build and CPU: the next command is refused without a probe
    with pytest.raises(BackendError, match="refuses"):
        cpucheck.ensure(["false-command-that-is-never-run"])
    # ... and a user's command gets the message, not "Illegal instruction"
    done = cci("prompt", "embedded", "What is the capital of France?", db=tmp_path / "s.db",
               env={"XDG_CACHE_HOME": str(tmp_path)}, check=False)
    assert done.returncode != 0 and done.returncode != -4
    assert "this llama.cpp build uses a CPU instruction this machine refuses" in done.stderr
    assert "--force-reinstall" in done.stderr

    memory.unlink()  # a good build: checked once, then not again
    cpucheck.ensure()
    assert json.loads(memory.read_text())[cpucheck.build_key()]["ok"] is True
    monkeypatch.setattr(cpucheck, "_checked", False)
    cpucheck.ensure(["false-command-that-is-never-run"])


def test_doctor_decodes_in_a_child_process(tmp_path):
    done = cci("doctor", "--no-smoke-test", db=tmp_path / "s.db", check=False)
    line = next(x for x in done.stdout.splitlines() if "llama.cpp on this CPU" in x)
    assert " ok " in line and "child process decoded" in line
    assert "AVX2" in done.stdout and "AMX" not in done.stdout
