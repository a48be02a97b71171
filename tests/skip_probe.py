"""Not collected by the suite (no test_ prefix): tests/test_skip_policy.py runs it in a pytest of its
own. Each reason of PROBE_REASONS (separated by '|') is a test that skips with it; with
PROBE_AT=module the module skips as a whole with the first."""
import os

import pytest

REASONS = os.environ["PROBE_REASONS"].split("|")
if os.environ.get("PROBE_AT") == "module":
    pytest.skip(REASONS[0], allow_module_level=True)


@pytest.mark.parametrize("k", range(len(REASONS)))
def test_probe(k):
    pytest.skip(REASONS[k])
