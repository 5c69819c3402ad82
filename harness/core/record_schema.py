"""The version of the results record's schema (``results.json``, documented in ``docs/record.md``).

Core layer: the writer (:mod:`harness.record`) stamps it, the baseline reader
(:mod:`reports.baseline`) refuses any other.
"""

SCHEMA_VERSION = 1
