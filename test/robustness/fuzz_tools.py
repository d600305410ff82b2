"""Shared settings and bookkeeping of the property-based robustness tests.

Every property test uses `profile(n)`: n examples, no deadline (the machines are shared),
derandomized (CI sees the same inputs every run), no example database written to disk.
Each test calls `tally(name, k)` with the number of malformed inputs one example threw at
the code under test; test_zz_inputs_budget.py checks the total once every test has run.
"""
from __future__ import annotations

import threading
from collections import Counter

from hypothesis import HealthCheck, settings

# test name -> inputs thrown (filled while the tests run)
INPUTS: Counter = Counter()
# test name -> examples asked for (filled at import, i.e. at collection)
EXAMPLES: dict = {}
_LOCK = threading.Lock()
TOTAL_INPUTS_REQUIRED = 10_000


def profile(name: str, max_examples: int):
    """Hypothesis settings for one property test, registered under name."""
    EXAMPLES[name] = max_examples
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def tally(name: str, inputs: int = 1) -> None:
    """Count inputs thrown by one example of the test registered as name."""
    with _LOCK:
        INPUTS[name] += inputs
