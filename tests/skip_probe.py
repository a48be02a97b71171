"""Not collected by the suite (no test_ prefix): tests/test_skip_policy.py runs it in a pytest of its
own, skipping with PROBE_REASON, at module level where PROBE_AT=module."""
import os

import pytest

if os.environ.get("PROBE_AT") == "module":
    pytest.skip(os.environ["PROBE_REASON"], allow_module_level=True)


def test_probe():
    pytest.skip(os.environ["PROBE_REASON"])
