"""The machine a benchmark runs on and what it writes out: CPUs, load, versions, the header, JSON.

The benchmark scripts run as `python bench/NAME.py`, so bench/ is on sys.path and this imports as
_common; it also makes `import resgraph` work from a checkout that is not installed (ROOT on sys.path).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    import resgraph
except ImportError:      # not installed: use the checkout bench/ lives in
    sys.path.insert(0, str(ROOT))
    import resgraph



def say(*a, **kw) -> None:
    print(*a, **kw, flush=True)


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


def load_average() -> tuple[float, float, float] | None:
    """The load average (1, 5, 15 min), None where the platform has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def load() -> str:
    """The load average (1, 5, 15 min) as text, "n/a" where the platform has none."""
    la = load_average()
    return "n/a" if la is None else f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"


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


# --------------------------------------------------------------------------------------------- other processes' load

def cpu_snapshot() -> tuple[float, float | None, float]:
    """(wall clock, CPU seconds the whole machine has been busy, CPU seconds of this process and its children)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def others_since(snap) -> float | None:
    """CPUs used on average by other processes on this machine since `snap` (another job's tests, say):
    the machine's busy time less this benchmark's own; a figure well above 0 marks a noisy measurement."""
    wall, busy, own = cpu_snapshot()
    if busy is None or snap[1] is None or wall <= snap[0]:
        return None
    return max(0.0, ((busy - snap[1]) - (own - snap[2])) / (wall - snap[0]))


def others_text(o: float | None) -> str:
    return "n/a" if o is None else f"{o:.2f}"


# --------------------------------------------------------------------------------------------- header and results

def machine_facts(threads: int | None = None, processor: bool = True) -> dict:
    """The interpreter and the machine: python, executable, platform, machine, [processor,] cpu_count,
    cpus_usable[, threads], resgraph's version."""
    h = {"python": f"{platform.python_implementation()} {platform.python_version()}",
         "executable": sys.executable, "platform": platform.platform(), "machine": platform.machine()}
    if processor:
        h["processor"] = cpu_name()
    h |= {"cpu_count": os.cpu_count(), "cpus_usable": usable_cpus()}
    if threads is not None:
        h["threads"] = threads
    h["resgraph"] = resgraph.__version__
    return h


def print_machine(h: dict, cpus_tail: str = "") -> None:
    """The python, platform and cpus lines of a header (the processor where `h` has one)."""
    print(f"   python    {h['python']}  ({h['executable']})")
    print(f"   platform  {h['platform']} ({h['machine']}{', ' + h['processor'] if 'processor' in h else ''})")
    print(f"   cpus      {h['cpu_count']} ({h['cpus_usable']} usable){cpus_tail}")


def header(title: str, threads: int, packages: tuple[str, ...], threads_label: str) -> dict:
    """Print the machine, the versions of resgraph and `packages` and the load average under `title`; return them.

    The cpus line ends "; {threads_label}: {threads}"."""
    h = machine_facts(threads) | {k: dist_version(k) for k in packages}
    h |= {"load_start": load(), "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    print(title)
    print_machine(h, f"; {threads_label}: {threads}")
    print("   versions  " + ", ".join(f"{k} {h[k]}" for k in ("resgraph", *packages)))
    print(f"   load average at start (1, 5, 15 min): {h['load_start']}")
    return h


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line: described by the first paragraph of its docstring `doc`."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def write_json(path, results: dict) -> None:
    """results as JSON to `path` (nothing where path is None)."""
    if path is None:
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    say(f"   results written to {path}")


def footer(results: dict, t0: float, tail: str = "") -> None:
    """The load average at the end (into results["header"]["load_end"]) and the benchmark's seconds since
    t0 (results["total_s"]); `tail` continues the load line."""
    results["header"]["load_end"] = load()
    results["total_s"] = time.perf_counter() - t0
    print(f"\n   load average at end (1, 5, 15 min): {results['header']['load_end']}   "
          f"(start {results['header']['load_start']}){tail}")
    print(f"   benchmark took {results['total_s']:.1f} s")
