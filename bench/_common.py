"""Helpers the benchmark scripts share (they run as `python bench/NAME.py`, so this imports as _common)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name, for the header of a benchmark's output."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_json(path: str, results: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    print(f"   results written to {path}")


def load() -> str:
    """The load average (1, 5, 15 min) as text, "n/a" where the platform has none."""
    try:
        a, b, c = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{a:.2f} {b:.2f} {c:.2f}"


def dist_version(name: str) -> str | None:
    """The installed version of distribution `name`, None if it is not installed."""
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001  (not installed, or odd metadata)
        return None


def find_console_script() -> Path | None:
    """The `resgraph` console script next to sys.executable, None if there is none."""
    bindir = Path(sys.executable).parent
    for name in ("resgraph", "resgraph.exe"):
        if (bindir / name).is_file():
            return bindir / name
    return None


def console_script(prog: str) -> Path:
    """The `resgraph` console script next to sys.executable; without one the benchmark `prog` ends."""
    script = find_console_script()
    if script is None:
        raise SystemExit(f"{prog}: no `resgraph` console script next to {sys.executable}; pip install -e . first")
    return script


def interleaved(measure: dict, rounds: int, *, rotate: bool = True, before=None) -> dict[str, list[float]]:
    """`rounds` rounds, each taking one measurement of every entry in turn, so that drift in machine load hits
    all alike; rotate: the order rotating round by round (else the same order every round); before(): called
    ahead of each measurement, untimed."""
    names = list(measure)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        first = r % len(names) if rotate else 0
        for k in names[first:] + names[:first]:
            if before:
                before()
            times[k].append(measure[k]())
    return times


def header(title: str, threads: int, packages: tuple[str, ...], threads_label: str) -> dict:
    """Print the machine, the versions of resgraph and `packages` and the load average under `title`; return them.

    The cpus line ends "; {threads_label}: {threads}"."""
    import resgraph  # the calling script has imported it already (from its checkout where it is not installed)

    cpus = usable_cpus()
    h = {"python": f"{platform.python_implementation()} {platform.python_version()}",
         "executable": sys.executable, "platform": platform.platform(), "machine": platform.machine(),
         "processor": cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": cpus, "threads": threads,
         "resgraph": resgraph.__version__,
         **{k: dist_version(k) for k in packages},
         "load_start": load(), "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    print(title)
    print(f"   python    {h['python']}  ({h['executable']})")
    print(f"   platform  {h['platform']} ({h['machine']}, {h['processor']})")
    print(f"   cpus      {h['cpu_count']} ({cpus} usable); {threads_label}: {threads}")
    print("   versions  " + ", ".join(f"{k} {h[k]}" for k in ("resgraph", *packages)))
    print(f"   load average at start (1, 5, 15 min): {h['load_start']}")
    return h
