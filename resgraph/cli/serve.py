"""Serving commands: `resgraph export triton` (a Triton model repository) and `resgraph serve` (a real
Triton server on one). Parsing and rendering only: the work is in resgraph.triton."""
from __future__ import annotations

import os
import sys

import click

from ..limits import MAX_BATCH
from .common import run, say


def _ints(text: str | None, option: str) -> tuple[int, ...]:
    from ..errors import OptionError
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise OptionError.at(option, f"'{text}' is not a list of batch sizes", "e.g. 4,8") from None


def serving_options(f):
    for opt in reversed([
        click.option("--max-batch", type=click.IntRange(1, MAX_BATCH), default=None,
                     help="Triton's max_batch_size [default: 32; tensorrt: the engine profile's MAX]."),
        click.option("--instances", type=click.IntRange(1, 256), default=1, show_default=True,
                     help="Model instances (instance_group count)."),
        click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
                     help="Let Triton queue requests and run them as one batch."),
        click.option("--max-queue-delay-us", type=click.IntRange(0, 10_000_000), default=100, show_default=True,
                     help="How long the dynamic batcher may hold a request to fill a batch."),
        click.option("--preferred-batch", default=None, help="Batch sizes the batcher aims for, e.g. 8,16."),
    ]):
        f = opt(f)
    return f


def _options(platform, name, max_batch, instances, kind, dynamic_batching, max_queue_delay_us, preferred_batch,
             backend, **more):
    from ..triton.export import Batching, TritonOptions
    batching = Batching(max_queue_delay_us, _ints(preferred_batch, "--preferred-batch")) if dynamic_batching else None
    return TritonOptions(platform=platform, name=name, max_batch=max_batch, instances=instances, kind=kind,
                         batching=batching, backend=backend, **more)


def _accelerator(accelerator, fp16, workspace, cache):
    """--accelerator and its options -> sections.Accelerator (None without --accelerator)."""
    from ..errors import OptionError
    from ..triton.sections import Accelerator
    if accelerator is None:
        given = [o for o, v in (("--accelerator-fp16", fp16), ("--accelerator-workspace", workspace),
                                ("--accelerator-cache", cache)) if v]
        if given:
            raise OptionError.at(given[0], "only with --accelerator tensorrt", "add --accelerator tensorrt")
        return None
    return Accelerator(fp16=fp16, workspace_mib=workspace, cache=cache)


def version_options(f):
    for opt in reversed([
        click.option("--version", "version", type=click.IntRange(1, 2**63 - 1), default=None,
                     help="The version folder to write [default: the version holding this same model file, "
                          "else the next free one; other versions are left in place]."),
        click.option("--version-policy", default=None, metavar="latest:K|all|specific:A,B",
                     help="Which versions Triton serves [default: Triton's, the newest]."),
        click.option("--warmup", type=click.Choice(["zero", "random", "none"]), default="zero", show_default=True,
                     help="model_warmup: one sample of the model's input shape and dtype, run at load."),
        click.option("--accelerator", type=click.Choice(["tensorrt"]), default=None,
                     help="onnxruntime platform: ONNX Runtime's TensorRT execution provider (GPU instances)."),
        click.option("--accelerator-fp16", is_flag=True, help="The accelerator's precision_mode FP16 [default: FP32]."),
        click.option("--accelerator-workspace", type=click.IntRange(1, 1 << 20), default=None, metavar="MiB",
                     help="The accelerator's max_workspace_size_bytes, in MiB [default: the backend's, 1 GiB]."),
        click.option("--accelerator-cache", default=None, metavar="PATH",
                     help="Cache built TensorRT engines in this folder of the server's machine."),
        click.option("--with-preprocess", is_flag=True,
                     help="Add <name>_preprocess (Python: decodes encoded images as `run` does) and <name>_ensemble "
                          "(encoded images in, the model's outputs out)."),
    ]):
        f = opt(f)
    return f


@click.group("export")
def export_group():
    """Export a compiled folder for a serving system."""


@export_group.command("triton")
@click.argument("artifact", type=click.Path())
@click.option("-o", "--out", "repo", required=True, type=click.Path(file_okay=False), help="The model repository.")
@click.option("--platform", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime",
              show_default=True, help="onnxruntime_onnx (model.onnx), tensorrt_plan (model.engine), or Triton's "
                                      "Python backend running resgraph's runtime.")
@click.option("--name", default=None, help="The model's name in the repository [default: the spec's name].")
@click.option("--kind", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="instance_group kind.")
@click.option("--backend", default="auto", show_default=True, help="python platform: the resgraph back end it opens.")
@click.option("--force", is_flag=True, help="Replace a config.pbtxt that serves the folder's other versions "
                                            "differently (platform, batch size, inputs, outputs).")
@serving_options
@version_options
def export_triton_cmd(artifact, repo, platform, name, kind, backend, force, max_batch, instances, dynamic_batching,
                      max_queue_delay_us, preferred_batch, version, version_policy, warmup, accelerator,
                      accelerator_fp16, accelerator_workspace, accelerator_cache, with_preprocess):
    """Write REPO/<name>/ (config.pbtxt, labels.txt, N/...) for the compiled folder ARTIFACT."""
    def body():
        from ..triton.export import export_triton
        o = _options(platform, name, max_batch, instances, kind, dynamic_batching, max_queue_delay_us,
                     preferred_batch, backend, version=version, version_policy=version_policy, warmup=warmup,
                     accelerator=_accelerator(accelerator, accelerator_fp16, accelerator_workspace, accelerator_cache),
                     with_preprocess=with_preprocess)
        path = export_triton(artifact, repo, o, force=force)
        model = os.path.basename(path)
        names = [model, f"{model}_preprocess", f"{model}_ensemble"] if with_preprocess else [model]
        for n in names:
            where = os.path.join(os.path.dirname(path), n)
            click.echo(f"exported {n} -> {where}/  ({platform if n == model else n.rsplit('_', 1)[1]})")
            for root, _, files in sorted(os.walk(where)):
                for f in sorted(files):
                    rel = os.path.relpath(os.path.join(root, f), where)
                    if "/artifact/" not in rel:
                        click.echo(f"  {rel}")
    run(body)


@click.command("serve")
@click.argument("artifact", type=click.Path())
@click.option("--port", "http_port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="HTTP port (0: any free one).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True, help="Where to listen (0.0.0.0: every interface).")
@click.option("--backend", default="auto", show_default=True, help="The resgraph back end the model runs on.")
@click.option("--restarts", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Start Triton's core again after it dies, up to this many times in 5 minutes; then exit.")
@click.option("--with-preprocess", is_flag=True,
              help="Also serve <name>_ensemble: encoded images (JPEG, PNG... as BYTES) in, decoded as `run` does.")
@serving_options
def serve_cmd(artifact, http_port, grpc_port, metrics_port, address, backend, restarts, with_preprocess, max_batch,
              instances, dynamic_batching, max_queue_delay_us, preferred_batch):
    """Serve the compiled folder ARTIFACT with a real Triton Inference Server (HTTP, gRPC, metrics),
    until Ctrl-C or SIGTERM. Its model repository is temporary: nothing is left behind."""
    def body():
        from ..triton.server import serve, wait
        o = _options("python", None, max_batch, instances, "cpu", dynamic_batching, max_queue_delay_us,
                     preferred_batch, backend, with_preprocess=with_preprocess)
        try:
            with serve(artifact, o, http_port, grpc_port, metrics_port, address) as (name, service):
                p = service.ports
                say(f"serving {name} at http://{address}:{p['http']}  (gRPC {address}:{p['grpc']}, metrics "
                    f"http://{address}:{p['metrics']}/metrics); Ctrl-C to stop")
                say(f"  HTTP requests up to {service.fit.max_body / 1e6:,.1f} MB, batches of 1 to "
                    f"{service.fit.max_batch}")
                click.echo(f"ready {p['http']} {p['grpc']} {p['metrics']}")   # one line for scripts
                sys.stdout.flush()
                wait(service, report, restarts)
        except KeyboardInterrupt:
            say("stopping")
    run(body)


def report(log_lines: list[str], message: str) -> None:
    """A core's death on stderr: its log's last lines (escaped: the log quotes requests), then what
    happens next."""
    from ..render import escape
    for line in log_lines:
        line = escape(line.rstrip())
        say(f"  | {line[:160]}{'...' if len(line) > 160 else ''}")
    say(f"serve: {message}")


COMMANDS = (export_group, serve_cmd)
