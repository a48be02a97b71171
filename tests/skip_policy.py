"""Which skips a run accepts.

Under CI (CI=true; .ci/run sets it when unset, so a run by hand is as strict), a test may skip only
for a reason on ALLOWED: the machine has no NVIDIA GPU, or no TensorRT (which no machine of this
project's CI has: see docs/tensorrt.md), or one of the few facts about the machine named below. Any
other skip (a missing package that `.[dev]` should have installed, a fixture that could not set up)
fails the run, with its reason.

With RESGRAPH_REQUIRE_GPU=1 (bench/gpu_check.sh sets it), a skip for want of a GPU or TensorRT fails
too: on the GPU machine, every GPU test must run. RESGRAPH_REQUIRE_GPU=cuda requires the GPU but
not TensorRT, for a GPU machine known to lack it.
"""
from __future__ import annotations

import os
import re

ALLOWED = {
    "gpu": re.compile(r"no NVIDIA GPU visible|sees no CUDA device|no CUDA device|has no CUDAExecutionProvider"),
    "tensorrt": re.compile(r"tensorrt is not installed", re.I),
    # the opposite machine: tests of the errors without a GPU or TensorRT skip where they are present
    "has a gpu": re.compile(r"a GPU is visible here|tensorrt is installed here"),
    # the shared contract checker sits beside a development checkout, not in a clone of the repository
    "no contract checker": re.compile(r"not present beside this checkout"),
}


def category(reason: str) -> str | None:
    """The ALLOWED category a skip's reason falls in, or None."""
    return next((k for k, pattern in ALLOWED.items() if pattern.search(reason)), None)


def verdict(reason: str, env=os.environ) -> str | None:
    """Why this skip fails the run (a sentence), or None where it may stand."""
    kind = category(reason)
    require = env.get("RESGRAPH_REQUIRE_GPU", "")
    if require not in ("", "0") and (kind == "gpu" or (kind == "tensorrt" and require != "cuda")):
        return f"RESGRAPH_REQUIRE_GPU={require}: this GPU test must run here, it skipped: {reason}"
    if env.get("CI", "").lower() in ("true", "1") and kind is None:
        return (f"under CI a test may skip only for want of a GPU or TensorRT (tests/skip_policy.py), it "
                f"skipped: {reason}")
    return None


def reason_of(report) -> str:
    """A skip report's reason: pytest keeps it as (file, line, 'Skipped: reason')."""
    r = report.longrepr
    text = r[2] if isinstance(r, tuple) and len(r) == 3 else str(r)
    return text.removeprefix("Skipped: ")
