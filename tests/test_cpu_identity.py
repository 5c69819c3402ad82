"""harness/core/cpu_identity.py: the one reader of /proc/cpuinfo."""

from __future__ import annotations

from harness.core.cpu_identity import CpuModel, cpu_model, parse_cpuinfo, usable_cpu_ids

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
