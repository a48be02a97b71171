"""The HTTP front of `resgraph serve`: the HTTP port users reach is resgraph's, not Triton's.

Triton's HTTP endpoint allocates what a request's JSON says before it checks it: the shape
[32, 1, 100000, 100000] with one value in "data" makes the core throw std::bad_alloc and abort, and
every client of the server with it (its gRPC endpoint refuses the same request cleanly). So `serve`
listens itself and hands the core, on a port of 127.0.0.1 that nobody else is told about, only
requests that fit the model:

    the body    at most Fit.max_body bytes, read by aiohttp within that bound (a gzip or deflate
                body is inflated within the same bound, and passed on inflated)
    inference   POST /v2/models/NAME[/versions/V]/infer: every input of the model's, each once, with its
                datatype and the shape [batch, *dims], 1 <= batch <= max_batch, one batch for all; a
                dim a size variable sets (H, W) one of its valid sizes, the same in every input that
                shares it (refused naming the input and the nearest valid sizes, as `run` refuses it);
                its "data" holds exactly that many finite numbers, or its binary_data_size is
                exactly that many bytes
    the rest    health, metadata, config, statistics... passed through as they are

A refused request gets Triton's own error form, {"error": "..."}: 400, 404 (another model), 413 (too
large), 415 (an unknown encoding), 503 (at capacity, or while the core restarts). What the core
answers is passed back unchanged, every output by name. The memory of the bodies being handled at
once is bounded (Budget): the largest body is a batch of max_batch of every input, at the largest
valid sizes where the model has size variables.
aiohttp (which tritonclient's HTTP client already brings) parses HTTP: the hop costs about half a
millisecond a request on a 2-core machine (bench/triton_load.py measures it beside the core's own HTTP).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field

from ..manifest import KSERVE, compact

JSON_BYTES_PER_VALUE = 32       # "-1.2345678901234567e-05, " and room for layout
# headers of one hop, not passed on; a request's body is passed on inflated, without its 100-continue
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
       "content-length"}
REQUEST_ONLY = {"content-encoding", "expect", "host"}
INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/(infer|generate|generate_stream)")
BYTES = {"FP32": 4, "FP16": 2, "UINT8": 1}   # per value; BYTES (encoded images) vary: _check_bytes
MAX_ENCODED = 32 << 20   # one encoded image's bytes at most (a 12k x 12k JPEG is about 30 MB)


@dataclass(frozen=True)
class Fit:
    """What an inference request must fit: the model's name, its inputs {name: (datatype, dims)}
    without the batch dimension (in spec order; a dim is a length, or a size variable's name), the
    largest batch, the largest body, and each size variable's SizeRange (its valid sizes)."""
    model: str
    inputs: dict
    max_batch: int
    max_body: int
    sizes: dict = field(default_factory=dict)
    also: tuple = ()    # other models the same front admits (export --with-preprocess's ensemble), each a Fit

    @property
    def largest_body(self) -> int:
        return max(f.max_body for f in (self, *self.also))

    @classmethod
    def of(cls, model: str, manifest, max_batch: int) -> "Fit":
        largest = {k: r.valid[-1] for k, r in manifest.sizes.items()}
        values = max_batch * sum(math.prod(t.at(largest)) for t in manifest.inputs)
        return cls(model, {t.name: (KSERVE[t.dtype], tuple(t.sample_shape)) for t in manifest.inputs}, max_batch,
                   max_body=(64 << 10) + values * JSON_BYTES_PER_VALUE, sizes=dict(manifest.sizes))


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Budget:
    """Bytes of request bodies held at once, across connections (one event loop: no lock): a body
    that would take the total past its bound is refused (503) rather than read."""

    def __init__(self, total: int):
        self.total, self.free = total, total

    def take(self, n: int) -> None:
        if n > self.free:
            raise Refused(503, "the server is at capacity: retry later")
        self.free -= n

    def give(self, n: int) -> None:
        self.free += n


def check_infer(fit: Fit, path: str, body: bytes, header_length: str | None) -> None:
    """Refused unless `body`, sent to `path`, is an inference request that fits the model."""
    m = INFER.fullmatch(urllib.parse.unquote(path.split("?", 1)[0]))
    if m is None:
        return
    fits = {f.model: f for f in (fit, *fit.also)}
    if m.group(1) not in fits:
        raise Refused(404, f"no model '{m.group(1)[:128]}' here: this server serves "
                      + " and ".join(f"'{n}'" for n in fits))
    fit = fits[m.group(1)]
    if m.group(3) != "infer":
        raise Refused(400, f"'{m.group(3)}' is for decoupled models: send POST /v2/models/{fit.model}/infer")
    head, binary = _split(body, header_length)
    try:
        request = json.loads(head, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise Refused(400, f"the request is not JSON: {e}"[:300]) from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, "the request has no \"inputs\" list")
    seen = Seen()
    for t in inputs:   # every input's shape first (a size the model does not take is the first thing said)
        _check_input(fit, t, seen)
    missing = [n for n in fit.inputs if n not in seen.shapes]
    if missing:
        raise Refused(400, f"the model takes {', '.join(fit.inputs)}; {', '.join(missing)} not given: "
                      "send every input by its name")
    sizes = [_check_data(fit, t) for t in inputs]
    if sum(s for s in sizes if s is not None) != binary:
        raise Refused(400, f"the binary data is {binary:,} bytes, its inputs' binary_data_size add up to "
                      f"{sum(s for s in sizes if s is not None):,}")


def _split(body: bytes, header_length: str | None) -> tuple[bytes, int]:
    """The JSON part of the body and the length of the binary part that follows it."""
    if header_length is None:
        return body, 0
    if not header_length.isdigit() or int(header_length) > len(body):
        raise Refused(400, f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within "
                      f"the body's {len(body):,} bytes")
    n = int(header_length)
    return body[:n], len(body) - n


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (the model refuses NaN and inf)")


@dataclass
class Seen:
    """What the inputs of a request checked so far set."""
    shapes: dict = field(default_factory=dict)   # input name -> its shape
    sizes: dict = field(default_factory=dict)    # size variable -> (the input that set it, its length)


def _check_input(fit: Fit, t, seen: Seen) -> None:
    """One input of the request, its name, datatype and shape (`seen`: what the inputs before it set,
    updated)."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise Refused(400, "each input needs a \"name\"")
    name = t["name"]
    if name not in fit.inputs:
        raise Refused(400, f"unknown input '{name[:64]}': the model's {'is' if len(fit.inputs) == 1 else 'are'} "
                      + ", ".join(f"'{n}'" for n in fit.inputs))
    if name in seen.shapes:
        raise Refused(400, f"input '{name}' is given twice")
    datatype, dims = fit.inputs[name]
    if t.get("datatype") != datatype:
        raise Refused(400, f"input '{name}' has datatype {str(t.get('datatype'))[:16]!r}: the model takes {datatype}")
    _check_shape(fit, name, t.get("shape"), seen)


def _check_data(fit: Fit, t) -> int | None:
    """One input's values, for its (checked) shape: its binary_data_size, or None where its values
    are in "data"."""
    name, shape = t["name"], t["shape"]
    datatype = fit.inputs[name][0]
    count = math.prod(shape)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise Refused(400, f"input '{name}': \"parameters\" must be an object")
    if datatype == "BYTES":
        return _check_bytes(fit, t, count, params)
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size != count * BYTES[datatype]:
            raise Refused(400, f"input '{name}' of shape {shape} is {count * BYTES[datatype]:,} bytes, its "
                          f"binary_data_size says {str(size)[:20]}")
        return size
    if "shared_memory_region" in params:
        size = params.get("shared_memory_byte_size")
        if type(size) is not int or size != count * BYTES[datatype]:
            raise Refused(400, f"input '{name}' of shape {shape} is {count * BYTES[datatype]:,} bytes, its "
                          f"shared_memory_byte_size says {str(size)[:20]}")
        return None
    if _values(t.get("data")) != count:
        raise Refused(400, f"input '{name}' of shape {shape} needs {count:,} numbers in \"data\", "
                      f"it holds {_values(t.get('data')):,}")
    return None


def _check_bytes(fit: Fit, t, count: int, params: dict) -> int | None:
    """A BYTES input (encoded images): in binary, each element a 4-byte length and its bytes, so its
    binary_data_size is at least 4 per element and within the body's bound; in "data", one string each."""
    name = t["name"]
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or not 4 * count <= size <= fit.max_body:
            raise Refused(400, f"input '{name}': binary_data_size {str(size)[:20]} is not the size of {count} "
                          f"encoded element(s) (4 bytes of length each, {fit.max_body:,} bytes in all at most)")
        return size
    data = t.get("data")
    if not isinstance(data, list) or len(data) != count or not all(isinstance(x, str) for x in data):
        raise Refused(400, f"input '{name}' of shape {t['shape']} needs {count} strings in \"data\" "
                      "(or binary data)")
    return None


def _check_shape(fit: Fit, name: str, shape, seen: Seen) -> None:
    """The input's shape is [batch, *dims], its batch the other inputs', and each size variable in it
    one of its valid sizes, the same as in the inputs before it (the wording of runtime.check_feeds)."""
    dims = fit.inputs[name][1]
    expected = f"[batch, {', '.join(map(str, dims))}] with batch 1 to {fit.max_batch}"
    if (not isinstance(shape, list) or len(shape) != 1 + len(dims) or not all(type(d) is int for d in shape)
            or not 1 <= shape[0] <= fit.max_batch
            or any(got != d if isinstance(d, int) else got < 1 for d, got in zip(dims, shape[1:]))):
        raise Refused(400, f"input '{name}' has shape {json.dumps(shape)[:80]}: the model takes {expected}")
    first = next(iter(seen.shapes.items()), None)
    if first is not None and first[1][0] != shape[0]:
        raise Refused(400, f"input '{name}' has a batch of {shape[0]}, but '{first[0]}' has {first[1][0]}: give "
                      "every input the same number of samples")
    seen.shapes[name] = shape
    for d, got in zip(dims, shape[1:]):
        if isinstance(d, int):
            continue
        earlier, size = seen.sizes.setdefault(d, (name, got))
        if size != got:
            raise Refused(400, f"input '{name}': {d} is {got} here but {size} in input '{earlier}': every "
                          f"input's {d} is the same size")
        r = fit.sizes[d]
        if got not in r.valid:
            raise Refused(400, f"input '{name}': {d} = {got} is not a size the model takes ({compact(r.valid)}); "
                          f"the nearest valid sizes are {' or '.join(map(str, r.nearest(got)))}: resize or pad to one")


def _values(data) -> int:
    """How many numbers a (nested) "data" list holds; -1 where something in it is not a number."""
    if not isinstance(data, list):
        return -1
    n, stack = 0, [data]
    while stack:
        for x in stack.pop():
            if isinstance(x, list):
                stack.append(x)
            elif type(x) in (int, float):
                n += 1
            else:
                return -1
    return n


def too_large(n: int | None, fit: Fit, inflated: bool = False) -> str:
    """A body of n bytes (None: more than the bound, found while reading it) is too large."""
    size = f"is {n:,} bytes, more than" if n is not None else "is more than"
    largest = " at the largest valid sizes" if fit.sizes else ""
    return (f"the request's body{' (inflated)' * inflated} {size} the {fit.max_body:,} that a batch of "
            f"{fit.max_batch} inputs{largest} takes: send fewer inputs at once")


class Front:
    """aiohttp's server on (address, port), on an event loop of its own thread, handing what fits to
    the core at 127.0.0.1:core_port through one pool of kept-alive connections."""

    def __init__(self, address: str, port: int, fit: Fit, core_port: int):
        from aiohttp import web
        # aiohttp logs each malformed request with its bytes: a client could write to serve's terminal
        logging.getLogger("aiohttp.server").disabled = True
        self.fit, self.core = fit, f"http://127.0.0.1:{core_port}"
        self.budget = Budget(max(1 << 30, 2 * fit.largest_body))
        self.loop = asyncio.new_event_loop()
        # client_max_size bounds the body aiohttp reads, inflated (gzip, deflate), chunked or not
        app = web.Application(client_max_size=fit.largest_body, handler_args={"max_field_size": 16384})
        app.router.add_route("*", "/{tail:.*}", self.handle, expect_handler=self.expect)
        app.on_startup.append(self._open_pool)
        app.on_cleanup.append(self._close_pool)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, address, port, reuse_address=True, backlog=128)
        try:
            self.loop.run_until_complete(site.start())   # bound here: OSError for a port in use
        except BaseException:
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()
            raise
        self.address, self.port = self.runner.addresses[0][:2]
        self.thread: threading.Thread | None = None

    async def _open_pool(self, app) -> None:
        import aiohttp
        self.pool = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                          timeout=aiohttp.ClientTimeout(total=600), auto_decompress=False)

    async def _close_pool(self, app) -> None:
        await self.pool.close()

    def start(self) -> "Front":
        self.thread = threading.Thread(target=self.loop.run_forever, name="resgraph-front", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.thread = None
        else:
            self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    async def expect(self, request):
        """curl asks before sending a body of more than 1 KB: a body too large is refused unsent."""
        from aiohttp import web
        if request.content_length is not None and request.content_length > self.fit.largest_body:
            return _refusal(Refused(413, too_large(request.content_length, self.fit)), close=True)
        if request.version != (1, 1) or request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect', '')[:40]}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def handle(self, request):
        from aiohttp import web
        # a chunked body states no length: it may take up to the bound, and holds that much of the budget
        length = request.content_length
        bound = self.fit.largest_body
        held = bound if length is None and request.body_exists else min(length or 0, bound)
        try:
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("identity", "gzip", "deflate"):
                raise Refused(415, f"Content-Encoding {encoding[:20]!r}: gzip, deflate or none")
            self.budget.take(held)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Refused(413, too_large(None, self.fit, inflated=encoding != "identity")) from None
            check = (self.fit, request.raw_path, body, request.headers.get("Inference-Header-Content-Length"))
            if len(body) > 1 << 20:   # parsing megabytes of JSON would hold up every other connection
                await asyncio.get_running_loop().run_in_executor(None, check_infer, *check)
            else:
                check_infer(*check)
            return await self.ask_core(request, body)
        except Refused as e:
            return _refusal(e, close=e.status == 413)
        except Exception as e:  # noqa: BLE001  (a bug of the front: the client hears of it, serve goes on)
            print(f"serve: internal error in the HTTP front: {type(e).__name__}: {e!r}"[:500], file=sys.stderr)
            return _refusal(Refused(500, f"internal error in serve's HTTP front ({type(e).__name__}): "
                                         "a bug in resgraph, please report it"))
        finally:
            self.budget.give(held)

    async def ask_core(self, request, body: bytes):
        """The core's answer, passed back as it is; 503 where the core does not answer (restarting)."""
        import aiohttp
        from aiohttp import web
        sent = {k: v for k, v in request.headers.items() if k.lower() not in HOP | REQUEST_ONLY}
        try:
            async with self.pool.request(request.method, self.core + request.raw_path, data=body or None,
                                         headers=sent, allow_redirects=False) as r:
                answer = await r.read()
                headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
                return web.Response(status=r.status, body=answer, headers=headers)
        except (aiohttp.ClientError, OSError):
            raise Refused(503, "the model server is not answering (restarting?): retry in a few seconds") from None


def _refusal(e: Refused, close: bool = False):
    from aiohttp import web
    headers = {"Connection": "close"} if close else None
    return web.json_response({"error": f"resgraph: {e}"}, status=e.status, headers=headers)

