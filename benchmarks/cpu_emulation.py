"""Make this x86 CPU's libraries take the code paths of an older or plainer x86 CPU, per process.

One physical CPU can stand in for several kinds of x86 CPU because every library the OV kernel
leans on picks its SIMD kernels at start-up and lets an environment variable override the pick:

- OpenBLAS (numpy's BLAS here: the kernel's products) ``OPENBLAS_CORETYPE`` (SkylakeX, Haswell,
  Sandybridge, Nehalem; Prescott falls back to OpenBLAS's plainest x86-64 kernels);
- numba (the kernel's compiled counting loop) ``NUMBA_CPU_NAME`` (the LLVM target it compiles
  for: haswell has AVX2, sandybridge AVX, nehalem SSE4.2, generic SSE2) with ``NUMBA_CPU_FEATURES``
  empty (else numba adds the host's features, AVX-512 included, to any named target);
- numpy's own loops (the fallback counting, the set-up) ``NPY_DISABLE_CPU_FEATURES`` (down to
  its x86-64-v2 baseline, which cannot be switched off);
- torch ``ATEN_CPU_CAPABILITY`` (avx512, avx2, default) and MKL ``MKL_ENABLE_INSTRUCTIONS`` /
  ``MKL_CBWR``.

Threads: a configuration runs on ``cpus`` CPUs (the process's affinity mask, set before the
libraries start, and the thread variables), as a CPU with that many cores would.
Cache sizes and memory bandwidth are this machine's in every configuration: only instruction
sets and thread counts are emulated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_NO_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
_NO_AVX2 = "X86_V3 " + _NO_AVX512


@dataclass(frozen=True)
class Isa:
    """One instruction-set level: the environment that makes the libraries use it."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


ISA_LEVELS: dict[str, Isa] = {
    "avx512": Isa("avx512 (native)"),
    "avx2": Isa("avx2", {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "", "NPY_DISABLE_CPU_FEATURES": _NO_AVX512,
                         "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    "avx": Isa("avx", {"OPENBLAS_CORETYPE": "Sandybridge", "NUMBA_CPU_NAME": "sandybridge", "NUMBA_CPU_FEATURES": "", "NPY_DISABLE_CPU_FEATURES": _NO_AVX2,
                       "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX"}),
    "sse4.2": Isa("sse4.2", {"OPENBLAS_CORETYPE": "Nehalem", "NUMBA_CPU_NAME": "nehalem", "NUMBA_CPU_FEATURES": "", "NPY_DISABLE_CPU_FEATURES": _NO_AVX2,
                             "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}),
    "generic": Isa("generic", {"OPENBLAS_CORETYPE": "Prescott", "NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "", "NPY_DISABLE_CPU_FEATURES": _NO_AVX2,
                               "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "MKL_CBWR": "COMPATIBLE"}),
}
"""Instruction-set levels, newest first (generic: OpenBLAS's and LLVM's plainest x86-64 code)."""


@dataclass(frozen=True)
class Configuration:
    """An instruction-set level on ``cpus`` CPUs."""

    isa: str
    cpus: int

    @property
    def label(self) -> str:
        return f"{ISA_LEVELS[self.isa].name}, {self.cpus} CPU{'s' if self.cpus > 1 else ''}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the level's variables and thread counts;
        a variable the level does not set is removed (so the parent's own emulation does not leak in)."""
        env = dict(os.environ if base is None else base)
        for isa in ISA_LEVELS.values():
            for name in isa.env:
                env.pop(name, None)
        env.update(ISA_LEVELS[self.isa].env)
        threads = str(self.cpus)
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
                    "NUMBA_NUM_THREADS": threads})
        return env


def parse_configurations(text: str, available_cpus: int) -> list[Configuration]:
    """``"avx512,avx2:1,generic:2"`` -> configurations; a level without ``:cpus`` runs on 1 CPU and
    on all available ones; ``"all"`` is every level so.  Unknown levels and more CPUs than are
    available are refused."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if items == ["all"]:
        items = list(ISA_LEVELS)
    out: list[Configuration] = []
    for item in items:
        isa, _, cpus = item.partition(":")
        if isa not in ISA_LEVELS:
            raise ValueError(f"unknown instruction-set level {isa!r}: one of {', '.join(ISA_LEVELS)}")
        counts = [int(cpus)] if cpus else sorted({1, available_cpus})
        if any(c < 1 or c > available_cpus for c in counts):
            raise ValueError(f"{item!r}: this process may use {available_cpus} CPU(s)")
        out.extend(Configuration(isa, c) for c in counts)
    return out
