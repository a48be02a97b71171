"""A real Triton Inference Server on a model repository: the `tritonserver` binary and Python backend
that the nvidia-pytriton package bundles (they run on the CPU), started as a child process on
127.0.0.1, ready-checked, and stopped (SIGTERM, then SIGKILL after a bound) with nothing left behind.

Running the bundled binary from a virtualenv takes three things (what pytriton itself does):
    the Python backend stub for this Python version copied into backends/python/,
    LD_LIBRARY_PATH with nvidia_pytriton.libs (Triton's own libraries) and this Python's LIBDIR (the
    stub embeds libpython: it must be the same build as the interpreter whose packages it imports),
    PATH starting with this interpreter's bin/ (the stub finds its prefix, hence the virtualenv's
    site-packages and resgraph, from the `python` there).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import replace

from ..errors import BackendError, OptionError

INSTALL = "pip install 'resgraph[serve]' (nvidia-pytriton: Triton's core and Python backend, for Linux x86-64)"


def _dist() -> tuple[str, str]:
    try:
        import pytriton
    except ImportError:
        raise BackendError.at("tritonserver", "Triton Inference Server is not installed", INSTALL) from None
    root = os.path.dirname(pytriton.__file__)
    dist, libs = os.path.join(root, "tritonserver"), os.path.join(os.path.dirname(root), "nvidia_pytriton.libs")
    if not os.path.isfile(os.path.join(dist, "bin", "tritonserver")):
        raise BackendError.at(dist, "this nvidia-pytriton has no tritonserver binary", INSTALL)
    return dist, libs


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies (even by kill -9),
    so a Triton never outlives its `resgraph serve` (what pytriton does too)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _port_free(address: str, port: int) -> bool:
    """Whether a server could listen on the port now: bound with SO_REUSEADDR, as servers (Triton
    among them) bind, so a port whose last connections are in TIME_WAIT (a server that just exited)
    counts as free, and only a listener holds it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def clean_stale_workspaces() -> None:
    """Workspaces of servers whose resgraph process is gone (killed): each holds its owner's pid."""
    root = tempfile.gettempdir()
    for e in os.scandir(root):
        if not (e.name.startswith("resgraph-triton-") and e.is_dir(follow_symlinks=False)):
            continue
        try:
            with open(os.path.join(e.path, "owner.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            continue                      # alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue                      # not ours to judge (no pid yet, another user's)
        shutil.rmtree(e.path, ignore_errors=True)


def owned_workspace() -> str:
    """A new temporary folder that names its owner (owner.pid), after removing those whose owner is
    gone (clean_stale_workspaces): a killed serve's are removed by the next."""
    clean_stale_workspaces()
    work = tempfile.mkdtemp(prefix="resgraph-triton-")
    with open(os.path.join(work, "owner.pid"), "w") as f:
        f.write(str(os.getpid()))
    return work


def _group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the processes in the process group `pgid`, from /proc."""
    found = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            with open(f"/proc/{e.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()   # after "(comm)", which may hold spaces
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append((int(e.name), int(fields[1])))
    return found


def end_group(pgid: int) -> None:
    """What is left of a process group whose leader (a Triton core) has exited: its Python backend
    stubs are killed, and those that came to this process (serve is their subreaper, and a
    container's PID 1 may be serve itself) are reaped, so no `<defunct>` entry stays behind."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    me, deadline = os.getpid(), time.monotonic() + 10
    while time.monotonic() < deadline:
        members = _group_members(pgid)
        for pid, parent in members:
            if parent == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if not any(parent == me for _, parent in members):
            return
        time.sleep(0.05)


def subreaper(on: bool) -> None:
    """Orphans of this process's children (a dead core's stubs) come to it, not to PID 1, which in
    a container may reap nothing (PR_SET_CHILD_SUBREAPER)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(36, int(on))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """with TritonServer(repo) as server: server.http_url, server.grpc_url ..."""

    def __init__(self, repo: str, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 address: str = "127.0.0.1", ready_timeout: float = 120.0, log_verbose: int = 0,
                 http_address: str | None = None):
        self.repo = os.path.abspath(repo)
        self.address = address
        self.http_address = http_address or address   # serve: 127.0.0.1, behind its front
        self.ports = {"http": http_port or free_port(), "grpc": grpc_port or free_port(),
                      "metrics": metrics_port or free_port()}
        self.ready_timeout, self.log_verbose = ready_timeout, log_verbose
        self.proc: subprocess.Popen | None = None
        self.work: str | None = None

    @property
    def http_url(self) -> str:
        return f"{self.http_address}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.ports['grpc']}"

    def start(self) -> "TritonServer":
        assert self.proc is None, "this server is running"
        dist, libs = _dist()
        for what, port in self.ports.items():
            if not _port_free(self.http_address if what == "http" else self.address, port):
                option = "--port" if what == "http" else f"--{what}-port"
                raise OptionError.at(f"{self.address}:{port}", f"the {what} port is in use (another server?)",
                                     f"choose another with {option} (0: any free one)")
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = os.path.join(dist, "python_backend_stubs", version, "triton_python_backend_stub")
        if not os.path.isfile(stub):
            raise BackendError.at("tritonserver", f"nvidia-pytriton has no Python backend stub for Python {version}",
                                  "use a Python it ships a stub for (see site-packages/pytriton/tritonserver/python_backend_stubs)")
        self.work = owned_workspace()
        server = os.path.join(self.work, "tritonserver")
        shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(stub, os.path.join(server, "backends", "python", "triton_python_backend_stub"))
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, sysconfig.get_config_var("LIBDIR"),
                                                      env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
        a, p = self.address, self.ports
        cmd = [os.path.join(server, "bin", "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={os.path.join(server, 'backends')}",
               f"--cache-directory={os.path.join(server, 'caches')}",
               f"--http-address={self.http_address}", f"--http-port={p['http']}", f"--grpc-address={a}", f"--grpc-port={p['grpc']}",
               f"--metrics-address={a}", f"--metrics-port={p['metrics']}", "--exit-timeout-secs=10",
               "--strict-readiness=true", f"--log-verbose={self.log_verbose}"]
        self.log = os.path.join(self.work, "tritonserver.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True,   # our Ctrl-C is for us: we stop it ourselves
                                         preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import urllib.request
        deadline = time.monotonic() + self.ready_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendError.at(self.repo, f"Triton exited ({self.proc.returncode}) while loading the "
                                      "repository:\n" + self.log_tail(),
                                      "see the log above: a model that failed to load says why")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    # ours, not another server's on that port: ours has logged that it listens there
                    if r.status == 200 and self.proc.poll() is None and \
                            f"Started HTTPService at {self.http_url}" in self.log_tail(1 << 20):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise BackendError.at(self.repo, f"Triton was not ready after {self.ready_timeout:g} s:\n" + self.log_tail(),
                              "a large model may need longer to load")

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except (OSError, AttributeError):
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to the server we started (its own process group: its stub processes too), SIGKILL
        after `timeout`; then remove the workspace."""
        code = None
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
                        try:
                            os.killpg(self.proc.pid, sig)   # its group: the server and its stub processes
                        except ProcessLookupError:
                            break
                        try:
                            self.proc.wait(wait)
                            break
                        except subprocess.TimeoutExpired:
                            continue
                end_group(self.proc.pid)   # what a core that died left: its Python backend stubs
                code = self.proc.returncode
                self.proc = None
        finally:
            if self.work is not None:
                shutil.rmtree(self.work, ignore_errors=True)
                self.work = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Service:
    """What `serve` runs: Triton's core, its HTTP on 127.0.0.1 only, behind resgraph's HTTP front
    (front.py) on the user's address and port, which admits only requests that fit the model.
    gRPC and metrics are the core's own (its gRPC endpoint refuses what does not fit by itself)."""

    def __init__(self, repo: str, fit, http_port: int, grpc_port: int, metrics_port: int, address: str):
        from .front import Front
        self.core = TritonServer(repo, free_port(), grpc_port, metrics_port, address=address,
                                 http_address="127.0.0.1")
        try:   # bound first: a port in use is refused before the core is started
            self.front = Front(address, http_port, fit, self.core.ports["http"])
        except OSError as e:
            said = "the http port is in use (another server?)" if e.errno == errno.EADDRINUSE else \
                f"cannot listen there: {e.strerror}"
            raise OptionError.at(f"{address}:{http_port}", said, "choose another with --port (0: any free one)") \
                from None
        self.fit = fit
        self.ports = {**self.core.ports, "http": self.front.port}

    @property
    def http_url(self) -> str:
        return f"{self.front.address}:{self.front.port}"

    @property
    def grpc_url(self) -> str:
        return self.core.grpc_url

    def start(self) -> "Service":
        subreaper(True)
        self.core.start()
        self.front.start()
        return self

    def stop(self) -> None:
        try:
            self.front.stop()
        finally:
            self.core.stop()
            subreaper(False)


def death(code: int, log: str) -> str:
    """Why the core exited, in a line: its signal or status, and what its log says last
    (an uncaught C++ exception's `what()`, an error line)."""
    how = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"status {code}"
    lines = [x.strip() for x in log.splitlines() if x.strip()]
    said = [x for x in lines if x.startswith(("terminate called", "what():", "E")) and "Signal (" not in x]
    return f"{how}: {said[-1][:200]}" if said else how


@contextlib.contextmanager
def serve(artifact: str, options, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          address: str = "127.0.0.1"):
    """`resgraph serve`'s whole lifecycle, as a context manager yielding (the model's name, the running
    Service): a workspace that names its owner (one a killed serve left is removed first), the
    model repository exported into it, the core and its front started; SIGTERM and SIGHUP stop it as
    Ctrl-C does (KeyboardInterrupt), and on the way out, with those signals held off so a second one
    cannot cut it short, both are stopped and the workspace removed."""
    from .export import export_triton
    from .front import Fit
    work = owned_workspace()

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    service = None
    try:
        path = export_triton(artifact, os.path.join(work, "repo"), options)
        name = os.path.basename(path)
        from ..manifest import read_manifest
        fit = Fit.of(name, read_manifest(os.path.join(path, "1", "artifact")), options.max_batch or 32)
        if options.with_preprocess:   # the ensemble too: encoded images in, each up to MAX_ENCODED bytes
            from .ensemble import ENCODED
            from .front import MAX_ENCODED
            body = min(256 << 20, (64 << 10) + fit.max_batch * (MAX_ENCODED + 4))
            fit = replace(fit, also=(Fit(f"{name}_ensemble", {ENCODED: ("BYTES", (1,))}, fit.max_batch, body),))
        service = Service(os.path.join(work, "repo"), fit, http_port, grpc_port, metrics_port, address)
        service.start()
        yield name, service
    finally:
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            if service is not None:
                service.stop()
            shutil.rmtree(work, ignore_errors=True)
        finally:
            for sig, h in {**held, **old}.items():
                signal.signal(sig, h)


def wait(service: Service, report, restarts: int = 3, window: float = 300.0) -> None:
    """Block while the service runs. A core that dies is reported (`report`: its cause and its log's
    last lines) and started again, while the front answers 503; more than `restarts` deaths within
    `window` seconds is a BackendError with the last cause."""
    deaths: list[float] = []
    while True:
        code = service.core.proc.wait()
        log = service.core.log_tail()
        cause = death(code, log)
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < window] + [now]
        report(log.splitlines()[-12:], f"Triton's core died ({cause})")
        if len(deaths) > restarts:
            raise BackendError.at("tritonserver", f"Triton's core died {len(deaths)} time"
                                  f"{'s' * (len(deaths) > 1)} in {window:g} s, last {cause}",
                                  "its log's last lines are above")
        report([], f"starting it again ({len(deaths)} of {restarts} restarts within {window:g} s); "
                   "until it is ready, HTTP requests are answered 503")
        service.core.stop()
        service.core.start()
