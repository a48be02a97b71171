"""Statistics of timings and how the benchmarks print them: medians, percentiles, spreads, ratios of
medians against goals, and the "median, min..max" rows.  Pure Python (no numpy): check_speed.py
needs only the standard library."""
from __future__ import annotations

import math
import os
import statistics

from _common import others_text


def percentile(xs, q: float) -> float:
    """The q-th percentile (0..100) of xs, interpolated linearly between the closest ranks (numpy's default,
    and statistics.quantiles(method="inclusive")); xs[0] for a single value."""
    s = sorted(xs)
    if not s:
        raise ValueError("percentile of no values")
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def p90(xs) -> float:
    return percentile(xs, 90)


def stats(times: list[float], *, with_max: bool = True, with_p90: bool = False) -> dict:
    """median_s, min_s[, max_s][, p90_s], runs and the times themselves (rounded to the microsecond)."""
    d = {"median_s": statistics.median(times), "min_s": min(times)}
    if with_max:
        d["max_s"] = max(times)
    if with_p90:
        d["p90_s"] = p90(times)
    return d | {"runs": len(times), "times_s": [round(t, 6) for t in times]}


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def minimums(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: min(v) for k, v in times.items()}


def spread_pct(xs: list[float]) -> float:
    """max - min as a percentage of the median."""
    return (max(xs) - min(xs)) / statistics.median(xs) * 100 if xs else float("nan")


def goal_text(r: float, goal) -> tuple[str, bool]:
    """The goal as text and whether r meets it: a float is a minimum, ('max', x) a maximum, (lo, hi) a band."""
    if isinstance(goal, tuple) and goal[0] == "max":
        return f"<= {goal[1]:.2f}x", r <= goal[1]
    if isinstance(goal, tuple):
        return f"{goal[0]:.2f}..{goal[1]:.2f}x", goal[0] <= r <= goal[1]
    return f">= {goal:.2f}x", r >= goal


def ratio_line(label: str, r: float, goal: float | None, r_min: float | None = None) -> str:
    """"   label   r x   (from the minimums ...)   goal >= g x   meets goal | BELOW GOAL"."""
    s = f"   {label:<46} {r:7.2f}x"
    if r_min is not None:
        s += f"   (from the minimums {r_min:.2f}x)"
    if goal is not None:
        s += f"   goal >= {goal:g}x   {'meets goal' if r >= goal else 'BELOW GOAL'}"
    return s


def ms(seconds: float, width: int = 8, digits: int = 1) -> str:
    """Seconds as milliseconds, "{:width.digits f} ms"."""
    return f"{seconds * 1e3:{width}.{digits}f} ms"


def range_rows(rows, *, unit: str = "ms", width: int = 10, digits: int = 3, title: str = "",
               extra_title: str | None = None) -> None:
    """Print a table of timings: one row per (label, times in seconds, extra text) with the median and
    min..max in `unit` ("ms" or "s") as "{:width.digits f}"; the extra text in its own column (headed
    extra_title, right-aligned to 10, where given)."""
    scale = 1e3 if unit == "ms" else 1.0
    w = max(len(label) for label, _, _ in rows)
    head = f"   {title:<{w}}  {'median':>{width + 1 + len(unit)}}  {'min..max':>{2 * width + 3}}"
    print(head + (f"  {extra_title:>10}" if extra_title is not None else ""))
    for label, v, extra in rows:
        med, lo, hi = statistics.median(v) * scale, min(v) * scale, max(v) * scale
        print(f"   {label:<{w}}  {med:{width}.{digits}f} {unit}  {lo:{width}.{digits}f}..{hi:<{width}.{digits}f}{unit}"
              f"  {extra}")


def goal_row(what: str, rg: str, ref: str, ratio: float, goal, others: float | None = None) -> dict:
    """A row of goal_table: what was measured, resgraph's figure and the reference's (as text), their ratio, the
    goal (as goal_text takes it), and the CPUs other processes used meanwhile (None: not a timing)."""
    g, met = goal_text(ratio, goal)
    return {"measurement": what, "resgraph": rg, "reference": ref, "ratio": ratio, "goal": g, "met": met,
            "others_cpus": others}


def goal_table(rows: list[dict]) -> None:
    """The rows (goal_row), how many goals were met, and what the last column means."""
    wm = max(len(r["measurement"]) for r in rows)
    wr = max(len(r["resgraph"]) for r in rows + [{"resgraph": "resgraph"}])
    wf = max(len(r["reference"]) for r in rows + [{"reference": "reference"}])
    print(f"   {'measurement':<{wm}}  {'resgraph':>{wr}}  {'reference':>{wf}}  {'ratio':>7}  {'goal':<12}  met?  "
          f"other CPUs busy")
    for r in rows:
        o = "" if "top-1" in r["measurement"] else others_text(r["others_cpus"])
        print(f"   {r['measurement']:<{wm}}  {r['resgraph']:>{wr}}  {r['reference']:>{wf}}  {r['ratio']:6.3f}x  "
              f"{r['goal']:<12}  {'yes' if r['met'] else 'NO ':<4}  {o:>6}")
    missed = [r["measurement"] for r in rows if not r["met"]]
    print(f"   {len(rows) - len(missed)} of {len(rows)} goals met" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    print(f"   other CPUs busy: CPUs used on average by other processes during that measurement's timed rounds "
          f"(of {os.cpu_count()}); above ~0.2 the ratios are unreliable")
