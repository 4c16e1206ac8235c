"""Ballast's own chaos suite (issue 16): a workload over several capabilities, seeded faults
(worker SIGKILLs, broker and database restarts, malformed envelopes) on services of its own,
and the invariants checked after.  ``bench/chaos --seed S --duration 10m``; the short run is
``tests/chaos/test_chaos.py``."""
