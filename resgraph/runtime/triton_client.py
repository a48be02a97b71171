"""A Triton endpoint as a runtime Session: `bench --triton URL` measures a served model with the same
loop, report and checks as an in-process back end (and `parity` could compare it the same way).

    http://HOST:PORT or HOST:PORT    Triton's HTTP/REST protocol (tritonclient.http)
    grpc://HOST:PORT                 its gRPC protocol (tritonclient.grpc)
One request per run(x) or run_all(feeds); last_io is not split out (the network and Triton's queue are in the latency).
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError, OptionError
from ..manifest import KSERVE
from .base import Options, Session


class TritonSession(Session):
    backend = "triton"

    def __init__(self, folder: str, manifest, url: str, model: str | None = None):
        super().__init__(folder, manifest, Options())
        try:
            scheme = url.split("://", 1)[0] if "://" in url else "http"
            if scheme not in ("http", "https", "grpc", "grpcs"):
                raise OptionError.at(url, f"unknown scheme '{scheme}' (--triton)",
                                     "http://, https://, grpc:// or grpcs://")
            if scheme.startswith("grpc"):
                import tritonclient.grpc as client
            else:
                import tritonclient.http as client
            address = url.split("://", 1)[-1]
        except ImportError:
            raise BackendError.at(url, "tritonclient is not installed", "pip install 'resgraph[serve]'") from None
        self.client_module, self.model = client, model or manifest.name
        self.device, self.precision = url, manifest.precision
        self.timeout = 120.0      # seconds a request may take: a stalled server fails the bench, not hangs it
        ssl = scheme in ("https", "grpcs")
        self.client = client.InferenceServerClient(address, ssl=ssl) if scheme.startswith("grpc") else \
            client.InferenceServerClient(address, ssl=ssl, connection_timeout=60.0, network_timeout=self.timeout)
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as e:  # noqa: BLE001  (connection refused, DNS, TLS: tritonclient's own types)
            raise BackendError.at(url, f"no Triton server answers there: {e}", "start one: resgraph serve FOLDER") from None
        if not ready:
            raise BackendError.at(url, f"Triton serves no ready model '{self.model}'",
                                  "name it with --triton-model, or export it: resgraph export triton FOLDER -o REPO")

    def describe(self) -> str:
        return f"triton model {self.model} at {self.device}"

    def run(self, x: np.ndarray) -> np.ndarray:
        self.one_to_one()
        return self.run_all({self.input_name: x})[self.output_name]

    def run_all(self, feeds: dict) -> dict:
        """One request with every input, answered with every output (by name, spec order)."""
        feeds = self.check_feeds(feeds)
        inputs = []
        for t in self.inputs:
            i = self.client_module.InferInput(t.name, list(feeds[t.name].shape), KSERVE[t.dtype])
            i.set_data_from_numpy(feeds[t.name])
            inputs.append(i)
        if self.client_module.__name__.endswith("grpc"):
            r = self.client.infer(self.model, inputs, client_timeout=self.timeout)
        else:                     # bounded by the client's network_timeout
            r = self.client.infer(self.model, inputs)
        return {t.name: r.as_numpy(t.name) for t in self.outputs}

    def close(self) -> None:
        self.client.close()
