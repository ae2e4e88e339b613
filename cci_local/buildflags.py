"""How llama.cpp is compiled for this host, and the install that uses it.

llama-cpp-python compiles llama.cpp from source.  Left alone it builds with
``-march=native``: every instruction set the CPU advertises, AMX included.  Some
hosts advertise AMX (``amx_tile`` in /proc/cpuinfo) but refuse it, a VM whose
hypervisor does not pass the tile state through, and the first prompt of more
than one token then dies with SIGILL in ``libggml-cpu`` (``tilezero``).

So on x86_64 the default build is not native: it names the safe fast paths
(AVX, AVX2, FMA, F16C, BMI2) the CPU advertises, turns AMX off, and turns an
AVX-512 extension on only when a tiny program using it really runs here (a
compile-and-run probe in a child process).  Elsewhere (Apple silicon, aarch64)
the native build is kept.  The user's own ``CMAKE_ARGS`` come after ours, so
theirs win (CMake keeps the last ``-D`` of a name): ``-DGGML_CUDA=ON``,
``-DGGML_METAL=ON``, ``-DGGML_NATIVE=ON`` to have the old build back.

Standard library only: the Makefile runs this file before anything else is
installed (``python cci_local/buildflags.py --install``)."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

BASE_ARGS = ["-DLLAVA_BUILD=OFF"]  # the multimodal library: unused, ~5 of ~8 build minutes
AMX_OFF = ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
# CMake option -> the /proc/cpuinfo flags that must all be advertised.
SAFE = {
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
}
# Options turned on only when advertised *and* a probe program using them runs.
PROBED = {
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
    "GGML_AVX_VNNI": ("avx_vnni",),
}
# A program per probed option: exit 0 only if the instructions ran and computed right.
_PROBES = {
    "GGML_AVX512": ("-mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw", """
        volatile int one = 1;
        __m512i a = _mm512_set1_epi32(one);
        __m512i b = _mm512_add_epi32(a, a);
        __m512i c = _mm512_abs_epi8(_mm512_set1_epi8((char)-one));
        int r = _mm512_reduce_add_epi32(b) + _mm512_reduce_add_epi32(c);
        return r == 32 + 16 * 0x01010101 ? 0 : 1;"""),
    "GGML_AVX512_VBMI": ("-mavx512f -mavx512vbmi", """
        volatile char one = 1;
        __m512i a = _mm512_permutexvar_epi8(_mm512_set1_epi8(0), _mm512_set1_epi8(one));
        return _mm512_reduce_add_epi32(a) == 16 * 0x01010101 ? 0 : 1;"""),
    "GGML_AVX512_VNNI": ("-mavx512f -mavx512vnni", """
        volatile char one = 1;
        __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(one),
                                        _mm512_set1_epi8(one));
        return _mm512_reduce_add_epi32(a) == 64 ? 0 : 1;"""),
    "GGML_AVX512_BF16": ("-mavx512f -mavx512bf16", """
        volatile float one = 1.0f;
        __m512 x = _mm512_set1_ps(one);
        __m512bh h = _mm512_cvtne2ps_pbh(x, x);
        __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), h, h);
        return _mm512_reduce_add_ps(d) == 32.0f ? 0 : 1;"""),
    "GGML_AVX_VNNI": ("-mavx2 -mavxvnni", """
        volatile char one = 1;
        __m256i a = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(one),
                                            _mm256_set1_epi8(one));
        int out[8]; _mm256_storeu_si256((__m256i *)out, a);
        return out[0] == 4 ? 0 : 1;"""),
}
# Instructions of AMX: none may appear in the CPU library (tests/test_buildflags.py).
AMX_MNEMONICS = re.compile(r"\b(ldtilecfg|sttilecfg|tilezero|tileloadd\w*|tilestored|"
                           r"tilerelease|tdpb\w+|tdpfp16ps)\b")


def amx_instructions(binary: str | os.PathLike) -> list[str]:
    """The AMX instructions in a binary or library, by objdump (binutils); raises
    FileNotFoundError where objdump is missing."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise FileNotFoundError("objdump (binutils) is needed: apt-get install binutils")
    code = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(binary)],
                          capture_output=True, text=True, check=True).stdout
    return sorted(set(AMX_MNEMONICS.findall(code)))


def cpu_flags() -> set[str]:
    """The flags the CPU advertises (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe(option: str, compiler: str | None = None) -> bool:
    """Whether the instructions behind ``option`` really run on this machine: a
    small C program using them is compiled and run in a child process (a SIGILL
    there costs nothing).  False where no C compiler is found."""
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return False
    cflags, body = _PROBES[option]
    with tempfile.TemporaryDirectory(prefix="cci-probe-") as tmp:
        source, binary = Path(tmp) / "probe.c", Path(tmp) / "probe"
        source.write_text("#include <immintrin.h>\nint main(void) {" + body + "\n}\n")
        built = subprocess.run([compiler, "-O1", *cflags.split(), str(source), "-o", str(binary)],
                               capture_output=True)
        if built.returncode != 0:
            return False
        try:
            return subprocess.run([str(binary)], capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def default_args(machine: str | None = None, flags: set[str] | None = None,
                 run_probe: Callable[[str], bool] = probe) -> list[str]:
    """Our CMake arguments for llama.cpp on this host (see the module docstring)."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return list(BASE_ARGS)
    flags = cpu_flags() if flags is None else flags
    args = [*BASE_ARGS, "-DGGML_NATIVE=OFF"]
    for option, needs in SAFE.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    for option, needs in PROBED.items():
        on = all(f in flags for f in needs) and run_probe(option)
        args.append(f"-D{option}={'ON' if on else 'OFF'}")
    return args + AMX_OFF


def cmake_args(user: str | None = None, **kwargs) -> str:
    """Ours, then the user's ``CMAKE_ARGS`` (theirs win)."""
    user = os.environ.get("CMAKE_ARGS", "") if user is None else user
    return " ".join([*default_args(**kwargs), *shlex.split(user)])


def requirement(pyproject: Path | None = None) -> str:
    """llama-cpp-python as pyproject.toml asks for it (one place for its lower bound)."""
    pyproject = pyproject or Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        match = re.search(r'"(llama-cpp-python\s*[<>=!~][^";]*)"', pyproject.read_text())
    except OSError:
        match = None
    return match.group(1).replace(" ", "") if match else "llama-cpp-python"


def rebuild_command(python: str | None = None, version: str | None = None) -> str:
    """The exact command that rebuilds llama-cpp-python with the default flags here."""
    target = f"llama-cpp-python=={version}" if version else requirement()
    return (f"CMAKE_ARGS={shlex.quote(cmake_args())} {shlex.quote(python or sys.executable)} "
            f"-m pip install --no-cache-dir --force-reinstall --no-deps {shlex.quote(target)}")


def install(force: bool = False) -> int:
    """Install llama-cpp-python built with :func:`cmake_args`.  ``--no-cache-dir``
    because pip reuses a wheel it built before, whatever CMAKE_ARGS now say; a
    stamp beside the interpreter's prefix rebuilds when the arguments change."""
    args = cmake_args()
    stamp = Path(sys.prefix) / ".llama-cmake-args"
    installed = subprocess.run([sys.executable, "-m", "pip", "show", "-q", "llama-cpp-python"],
                               capture_output=True).returncode == 0
    same = stamp.is_file() and stamp.read_text().strip() == args
    if installed and same and not force:
        print(f"llama-cpp-python already built with: {args}")
        return 0
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir",
               f"{requirement()}"]
    if installed:
        command[5:5] = ["--force-reinstall", "--no-deps"]
    print(f"building llama-cpp-python with CMAKE_ARGS={args}", flush=True)
    done = subprocess.run(command, env={**os.environ, "CMAKE_ARGS": args})
    if done.returncode == 0:
        stamp.write_text(args + "\n")
    return done.returncode


def main(argv: list[str]) -> int:
    if "--install" in argv:
        return install(force="--force" in argv)
    if "--rebuild-command" in argv:
        print(rebuild_command())
        return 0
    print(cmake_args())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
