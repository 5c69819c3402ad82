"""harness/core/cpu_identity.py: the one reader of /proc/cpuinfo."""

from __future__ import annotations

import pytest

from harness.core import cpu_identity
from harness.core.cpu_identity import CPU_SHARE_VARIABLE, CpuModel, cpu_model, cpu_share, parse_cpuinfo, usable_cpu_ids

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse4_2 avx avx2 avx512f

processor\t: 1
model name\t: Another
flags\t\t: fpu
"""


def test_the_first_cpus_model_and_flags() -> None:
    assert parse_cpuinfo(CPUINFO) == CpuModel("Intel(R) Xeon(R) Processor", frozenset({"fpu", "sse4_2", "avx", "avx2", "avx512f"}))


def test_arm_features_and_missing_fields() -> None:
    assert parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\n") == CpuModel("", frozenset({"fp", "asimd"}))
    assert parse_cpuinfo("") == CpuModel("", frozenset())


def test_this_machine() -> None:
    assert cpu_model().name and usable_cpu_ids()


def test_cpu_share_is_the_usable_cpus_capped_by_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_identity, "usable_cpu_ids", lambda: {0, 1, 2, 3})
    monkeypatch.delenv(CPU_SHARE_VARIABLE, raising=False)
    assert cpu_share() == 4
    monkeypatch.setenv(CPU_SHARE_VARIABLE, "1")
    assert cpu_share() == 1
    monkeypatch.setenv(CPU_SHARE_VARIABLE, "16")  # a share never exceeds the CPUs this process may use
    assert cpu_share() == 4


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_cpu_share_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(CPU_SHARE_VARIABLE, raw)
    with pytest.raises(ValueError, match=CPU_SHARE_VARIABLE):
        cpu_share()
