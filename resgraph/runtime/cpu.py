"""The CPU's integer dot-product support: what decides how an int8 model computes on it.

ONNX Runtime's U8S8 kernels (what an int8 folder's model.onnx runs on) use, best first: AMX
(amx_int8: tile multiplies), AVX-512 VNNI or AVX-VNNI (vpdpbusd: u8 x s8 products summed into int32
in one instruction, exact), else AVX-512BW or AVX2 (vpmaddubsw: u8 x s8 pairs summed into a
*saturating* int16 before widening). Without VNNI the same QDQ file can give other numbers: pairs of
products beyond +-32767 clip (Intel Neural Compressor's validated models lose points on AVX2 for
this reason). So an int8 folder records the CPU its accuracy gate ran on (`describe()`, in the
manifest's quantization.cpu), and `run`/`bench` warn when the CPU they run on has a weaker tier
(`weaker_than`).

Linux: the flags of /proc/cpuinfo (the kernel's names), or of the file RESGRAPH_CPUINFO names (a copy
of another machine's: what run would say there). Elsewhere: unknown, and no warning is given.
"""
from __future__ import annotations

import os
import platform

# integer dot-product tiers, best first: (tier, the cpuinfo flags that give it, what it means)
TIERS = (
    ("amx", ("amx_int8",), "AMX int8 tiles"),
    ("vnni", ("avx512_vnni", "avx_vnni"), "VNNI: exact u8 x s8 dot products into int32"),
    ("avx512", ("avx512bw",), "AVX-512BW without VNNI: u8 x s8 pairs saturate at int16"),
    ("avx2", ("avx2",), "AVX2 without VNNI: u8 x s8 pairs saturate at int16"),
    ("none", (), "no SIMD integer dot product ONNX Runtime uses"),
)
# for the warning, what matters is the arithmetic, not the speed: AMX and VNNI both sum exact u8 x s8
# products into int32; AVX-512BW and AVX2 saturate pairs at int16; "none" runs other kernels again
_ARITHMETIC = {"amx": 0, "vnni": 0, "avx512": 1, "avx2": 1, "none": 2}
FLAGS = ("amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512bw", "avx512f", "avx2", "avx512_bf16")


def _cpuinfo(path: str) -> tuple[str | None, set[str] | None]:
    """(model name, flags) of the first processor in /proc/cpuinfo; (None, None) where there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def tier(flags: set[str] | None) -> str | None:
    """The best integer dot-product tier the flags give; None when the flags are unknown."""
    if flags is None:
        return None
    return next(t for t, needs, _ in TIERS if not needs or any(f in flags for f in needs))


def describe(path: str | None = None) -> dict:
    """{"model", "machine", "int8_dot" (a tier or None), "flags" (those of FLAGS it has; None: unknown)}
    of the CPU `path` describes (default: $RESGRAPH_CPUINFO, else /proc/cpuinfo)."""
    model, flags = _cpuinfo(path or os.environ.get("RESGRAPH_CPUINFO") or "/proc/cpuinfo")
    return {"model": model or platform.processor() or None, "machine": platform.machine(),
            "int8_dot": tier(flags), "flags": sorted(f for f in FLAGS if f in flags) if flags is not None else None}


def meaning(t: str | None) -> str:
    return next((m for name, _, m in TIERS if name == t), "unknown (no /proc/cpuinfo)")


def weaker_than(recorded: dict, now: dict | None = None) -> str | None:
    """A warning when this CPU's arithmetic (`now`, default describe()) is other than `recorded`'s (an
    int8 folder's quantization.cpu) in a way that can change results: exact (AMX, VNNI) on the gate's,
    saturating here; None when it is the same or better, or either is unknown."""
    now = describe() if now is None else now
    a, b = recorded.get("int8_dot"), now.get("int8_dot")
    if a not in _ARITHMETIC or b not in _ARITHMETIC or _ARITHMETIC[b] <= _ARITHMETIC[a]:
        return None
    return (f"this CPU's integer dot product is {b} ({meaning(b)}); the accuracy gate ran on {a} "
            f"({recorded.get('model') or 'another CPU'}): int8 results may differ from the gate's figures")
