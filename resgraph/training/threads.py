"""How many CPU threads `resgraph train` computes on, unless told.

torch's own default is one intra-op thread per core. Its OpenMP threads wait for each other at every
parallel region, so when one loses its core (to a loader worker, another process, the desktop) the
others spin until it comes back: on a busy 2-core machine an epoch on 2 threads took 3.5 to 17 times
as long as on 1 (medians, bench/train_threads.py); idle, 2 threads were 1.3 times faster, the price
of this rule there. So the default leaves one CPU free for the rest of the machine and one for each
data-loader worker, and splits the rest over the processes torchrun started on this machine:

    threads = max(1, (usable CPUs - 1) // local processes - workers)

Usable CPUs are the process's affinity mask (taskset, a container's cpuset), not the machine's count.
--threads overrides the rule; so does OMP_NUM_THREADS (torchrun sets it to 1 for several processes),
which torch has already applied. Loader workers compute on one thread each: torch sets that in every
worker it starts.
"""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1


def default_threads(cpus: int, workers: int, procs: int = 1) -> int:
    """The rule above: one CPU left free, one per loader worker, the rest shared by the `procs`
    processes on this machine; never below 1."""
    return max(1, (cpus - 1) // max(1, procs) - workers)


def choose_threads(threads: int | None, workers: int, env=None) -> tuple[int | None, str]:
    """(the thread count to set, or None to keep torch's; where it comes from, for the line train prints)."""
    env = os.environ if env is None else env
    if threads:
        return threads, "--threads"
    if env.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
    cpus, procs = usable_cpus(), _int(env.get("LOCAL_WORLD_SIZE"), 1)
    per = f", shared by {procs} processes" if procs > 1 else ""
    return default_threads(cpus, workers, procs), (f"{cpus} usable CPUs less 1 left free and 1 per worker{per}; "
                                                   "--threads N to change")


def set_threads(threads: int | None, workers: int) -> str:
    """Set torch's intra-op threads by --threads, OMP_NUM_THREADS or the rule; the line that says so."""
    import torch
    n, why = choose_threads(threads, workers)
    if n is not None:
        torch.set_num_threads(n)
    n = torch.get_num_threads()
    return (f"resgraph: training on {n} CPU thread{'s' * (n != 1)}, {workers} loader "
            f"worker{'s' * (workers != 1)} ({why})")


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        return default
