"""What does serving through Triton cost, and what does its dynamic batching buy?  Side by side, one run.

For one compiled folder (default: the shipped digits model, compiled into a temporary folder), at each
--concurrency C (clients sending batch-1 requests back to back, each its own connection):

    direct         C threads calling one in-process Session.run (--backend, default ort-cpu)
    triton         a real Triton server (nvidia-pytriton's core), the model on the Python backend
                   running the same Session, dynamic batching OFF: one request, one execution
    triton+batch   the same with dynamic batching ON (max queue delay --delay-us): Triton runs the
                   requests that arrive together as one batch
    serve          triton+batch through resgraph serve's HTTP front (triton/front.py), which checks each
                   request against the model before the core sees it: what that hop costs
Reported: requests/s, p50 and p99 latency (ms) per row; ratios triton/direct and batch/no-batch; and
the mean batch Triton formed (inference count / execution count from its statistics).

With --contract, instead: what a uint8 model saves over the wire. One cheap network with resnet50's
input, [3, 224, 224] (so that the request, not the network, is what is measured), compiled twice, fp32
and --input uint8-nhwc, both served (Python backend, dynamic batching); clients send batch-1 binary
requests (what tritonclient sends with binary_data=True) to each in turn. Reported per model: the
request body's bytes and requests/s, p50, p99, and the ratios uint8/fp32.

    python bench/triton_load.py [FOLDER] [--concurrency 1,4,16] [--seconds 5] [--json out.json]
    python bench/triton_load.py --contract [--concurrency 1,4] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, cpu_name, load, usable_cpus, write_json
from _stats import percentile
from _timing import timed_until


def drive(call_factory, concurrency: int, seconds: float, shape) -> dict:
    """C threads, each with its own call (a client), batch-1 requests for `seconds`; latencies pooled."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    errors: list[BaseException] = []

    def worker(k):
        call = call_factory()
        x = np.random.default_rng(k).standard_normal((1, *shape), dtype=np.float32)
        mine = []
        try:
            mine = timed_until(call, stop, args=(x,))
        except BaseException as e:  # noqa: BLE001  (a failed request fails the row, not silently lowers it)
            errors.append(e)
        finally:
            getattr(call, "close", lambda: None)()
        with lock:
            lat.extend(mine)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrency} clients failed: {errors[0]!r}")
    return {"requests_per_s": len(lat) / wall, "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3, "requests": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--delay-us", type=int, default=500)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--contract", action="store_true", help="uint8 against fp32 requests (resnet50-sized input)")
    a = ap.parse_args()
    if a.contract:
        return contract(a)
    import tritonclient.http as th

    from resgraph.manifest import read_manifest
    from resgraph.runtime import Options, open_session
    from resgraph.triton.export import Batching, TritonOptions, export_triton
    from resgraph.triton.server import TritonServer
    work = tempfile.mkdtemp(prefix="triton-load-")
    folder = a.folder
    if folder is None:
        from resgraph.compile import compile_spec
        folder = os.path.join(work, "digits")
        compile_spec(os.path.join(ROOT, "specs", "digits_resnet.yaml"),
                     weights=os.path.join(ROOT, "specs", "weights", "digits_resnet.safetensors"), out=folder)
    m = read_manifest(folder)
    repo = os.path.join(work, "repo")
    export_triton(folder, repo, TritonOptions(platform="python", name="plain", batching=None, backend=a.backend))
    export_triton(folder, repo, TritonOptions(platform="python", name="batched", backend=a.backend,
                                              batching=Batching(a.delay_us)))
    print(f"{m.name}: {a.backend}, batch-1 requests, {a.seconds:g} s per row; {cpu_name()}, {usable_cpus()} CPUs, "
          f"load {load()}")
    rows = []
    session = open_session(folder, a.backend, Options())   # as the served model opens it
    try:
        measure(a, m, session, repo, rows, th, TritonServer)
    finally:
        session.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        write_json(a.json, {"model": m.name, "backend": a.backend, "seconds": a.seconds, "delay_us": a.delay_us,
                            "rows": rows})


def _front(fit, core_port: int, ports) -> None:
    """serve's HTTP front in a process of its own, as `resgraph serve` runs it (not sharing this
    process's interpreter lock with the benchmark's client threads)."""
    from resgraph.triton.front import Front
    front = Front("127.0.0.1", 0, fit, core_port)
    ports.put(front.port)
    front.loop.run_forever()


def measure(a, m, session, repo, rows, th, TritonServer) -> None:
    import multiprocessing

    from resgraph.triton.front import Fit
    with TritonServer(repo) as server:
        ctx = multiprocessing.get_context("fork")
        ports = ctx.Queue()
        front = ctx.Process(target=_front, args=(Fit.of("batched", m, 32), server.ports["http"], ports), daemon=True)
        front.start()
        try:
            _measure(a, m, session, rows, th, server.http_url, f"127.0.0.1:{ports.get(timeout=30)}")
        finally:
            front.terminate()
            front.join()


def _measure(a, m, session, rows, th, core, front) -> None:
    for c in (int(x) for x in a.concurrency.split(",")):
        direct = drive(lambda: session.run, c, a.seconds, m.input.sample_shape)
        row = {"concurrency": c, "direct": direct}
        for name, url in (("plain", core), ("batched", core), ("serve", front)):
            def client():
                cl = th.InferenceServerClient(url, connection_timeout=60, network_timeout=60)

                def call(x):
                    i = th.InferInput(m.input.name, list(x.shape), "FP32")
                    i.set_data_from_numpy(x)
                    return cl.infer("batched" if name == "serve" else name, [i]).as_numpy(m.output.name)
                call.close = cl.close
                return call
            model = "batched" if name == "serve" else name
            stats0 = th.InferenceServerClient(core).get_inference_statistics(model)["model_stats"][0]
            row[name] = drive(client, c, a.seconds, m.input.sample_shape)
            stats = th.InferenceServerClient(core).get_inference_statistics(model)["model_stats"][0]
            inf, ex = (stats["inference_count"] - stats0["inference_count"],
                       stats["execution_count"] - stats0["execution_count"])
            row[name]["mean_batch"] = inf / ex if ex else None
        rows.append(row)
        d, p, b = row["direct"], row["plain"], row["batched"]
        print(f"  concurrency {c:>3}: direct {d['requests_per_s']:>8,.0f} req/s (p50 {d['p50_ms']:.2f}, p99 "
              f"{d['p99_ms']:.2f} ms) | triton {p['requests_per_s']:>7,.0f} ({p['p50_ms']:.2f} / {p['p99_ms']:.2f}) "
              f"= {p['requests_per_s'] / d['requests_per_s']:.2f}x direct | +batching {b['requests_per_s']:>7,.0f} "
              f"({b['p50_ms']:.2f} / {b['p99_ms']:.2f}), mean batch {b['mean_batch'] or 0:.1f} = "
              f"{b['requests_per_s'] / p['requests_per_s']:.2f}x without")
        f = row["serve"]
        print(f"                   through serve's front {f['requests_per_s']:>7,.0f} req/s ({f['p50_ms']:.2f} / "
              f"{f['p99_ms']:.2f} ms) = {f['requests_per_s'] / b['requests_per_s']:.2f}x the core's own HTTP")


# a cheap network with resnet50's input: what is measured is the request, not the network
IMAGENET_SIZED = """resgraph: 1
name: imagenet_sized
input: {shape: [3, 224, 224]}
preprocess: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
layers:
  - conv: {out: 8, kernel: 32, stride: 32, padding: valid}
  - global_avgpool
  - flatten
  - linear: {out: 10}
"""


def contract(a) -> None:
    """fp32 against uint8-nhwc requests of one [3, 224, 224] model, served side by side."""
    import tritonclient.http as th

    from resgraph.backends.onnx.contract import Contract
    from resgraph.compile import compile_spec
    from resgraph.triton.export import Batching, TritonOptions, export_triton
    from resgraph.triton.server import TritonServer
    work = tempfile.mkdtemp(prefix="triton-contract-")
    spec = os.path.join(work, "imagenet_sized.yaml")
    with open(spec, "w") as f:
        f.write(IMAGENET_SIZED)
    repo, models = os.path.join(work, "repo"), {}
    for name, c in (("fp32", Contract()), ("uint8", Contract("uint8-nhwc"))):
        folder = compile_spec(spec, out=os.path.join(work, name), contract=c).out
        export_triton(folder, repo, TritonOptions(platform="python", name=name, backend=a.backend,
                                                  batching=Batching(a.delay_us)))
        models[name] = folder
    rng = np.random.default_rng(0)
    x = {"fp32": rng.standard_normal((1, 3, 224, 224), dtype=np.float32),
         "uint8": rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)}
    print(f"imagenet_sized ([3, 224, 224] in, 10 out): fp32 vs --input uint8-nhwc, {a.backend}, batch-1 binary "
          f"requests, {a.seconds:g} s per row; {cpu_name()}, {usable_cpus()} CPUs, load {load()}")
    rows = []
    try:
        with TritonServer(repo) as server:
            for c in (int(v) for v in a.concurrency.split(",")):
                row = {"concurrency": c}
                for name in ("fp32", "uint8"):
                    row[name] = _contract_row(th, server.http_url, name, x[name], c, a.seconds)
                rows.append(row)
                f, u = row["fp32"], row["uint8"]
                print(f"  concurrency {c:>3}: fp32 {f['bytes']:>9,} B/request {f['requests_per_s']:>7,.0f} req/s "
                      f"(p50 {f['p50_ms']:.2f}, p99 {f['p99_ms']:.2f} ms) | uint8 {u['bytes']:>9,} B "
                      f"{u['requests_per_s']:>7,.0f} req/s ({u['p50_ms']:.2f} / {u['p99_ms']:.2f}) | uint8/fp32: "
                      f"bytes {u['bytes'] / f['bytes']:.2f}x, req/s {u['requests_per_s'] / f['requests_per_s']:.2f}x")
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        write_json(a.json, {"contract": True, "backend": a.backend, "seconds": a.seconds, "rows": rows})


def _contract_row(th, url: str, model: str, x: np.ndarray, concurrency: int, seconds: float) -> dict:
    kind = "UINT8" if x.dtype == np.uint8 else "FP32"
    i = th.InferInput("input", list(x.shape), kind)
    i.set_data_from_numpy(x, binary_data=True)
    body, _ = th.InferenceServerClient.generate_request_body([i])

    def client():
        cl = th.InferenceServerClient(url, connection_timeout=60, network_timeout=60)

        def call(_):
            inp = th.InferInput("input", list(x.shape), kind)
            inp.set_data_from_numpy(x, binary_data=True)
            return cl.infer(model, [inp]).as_numpy("output")
        call.close = cl.close
        return call
    return {"bytes": len(body), **drive(client, concurrency, seconds, x.shape[1:])}


if __name__ == "__main__":
    main()
