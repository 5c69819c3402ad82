"""benchmarks/cpu_emulation.py: the configurations bench_ov_topk.py --cpu-configs runs each in a fresh process."""

from __future__ import annotations

import pytest

from benchmarks.cpu_emulation import ISA_LEVELS, Configuration, parse_configurations


def test_all_is_every_level_on_one_cpu_and_on_all() -> None:
    configs = parse_configurations("all", 2)
    assert [(c.isa, c.cpus) for c in configs] == [(isa, n) for isa in ISA_LEVELS for n in (1, 2)]
    assert [c.cpus for c in parse_configurations("avx2:1,generic", 1)] == [1, 1]


def test_bad_levels_and_cpu_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown instruction-set level 'avx9'"):
        parse_configurations("avx9", 2)
    with pytest.raises(ValueError, match="may use 2 CPU"):
        parse_configurations("avx2:4", 2)


def test_a_level_sets_its_variables_and_drops_the_others() -> None:
    """The parent's own emulation does not leak into a child of another level."""
    base = {"PATH": "/bin", "OPENBLAS_CORETYPE": "Nehalem", "NUMBA_CPU_NAME": "nehalem", "MKL_CBWR": "COMPATIBLE"}
    native = Configuration("avx512", 2).env(base)
    assert "OPENBLAS_CORETYPE" not in native and "NUMBA_CPU_NAME" not in native and "MKL_CBWR" not in native
    assert native["PATH"] == "/bin" and native["OMP_NUM_THREADS"] == "2"
    avx2 = Configuration("avx2", 1).env(base)
    assert avx2["OPENBLAS_CORETYPE"] == "Haswell" and avx2["NUMBA_CPU_NAME"] == "haswell"
    assert avx2["NUMBA_CPU_FEATURES"] == ""  # else numba adds the host's AVX-512 to the named target
    assert avx2["OPENBLAS_NUM_THREADS"] == "1" and "MKL_CBWR" not in avx2
