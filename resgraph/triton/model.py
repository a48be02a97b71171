"""A resgraph compiled folder served by Triton's Python backend (`resgraph export triton --platform
python` copies this file as <name>/1/model.py, the folder as <name>/1/artifact/).

It runs the same Session as `resgraph run` (ONNX Runtime on CPU or CUDA, TensorRT where present:
the config's `resgraph_backend` parameter, default auto), so one repository serves on machines
without NVIDIA's containers. Every input and output of the config is the model's, by name (spec
order). With dynamic batching Triton hands execute() several requests at once: those whose inputs
have the same shapes run as one batch, and each response gets its own rows of every output back.
(Triton's batcher forms batches of one shape only, as its docs say and the tests' mixed-size load
found; the grouping by shape keeps a size-variable model right should it ever hand over more.)
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        backend = config.get("parameters", {}).get("resgraph_backend", {}).get("string_value", "auto")
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        from resgraph.runtime import Options, open_session
        device = int(args.get("model_instance_device_id") or 0)   # each GPU instance on its own GPU
        self.session = open_session(folder, backend, Options(device_id=device))

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}   # the inputs' shapes -> the requests with them, each {name: array}
        for k, r in enumerate(requests):
            feeds = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            # a request holding NaN or inf is refused, as `resgraph run` refuses such an input; the others run
            bad = [n for n, x in feeds.items() if not np.isfinite(x).all()]
            if bad:
                responses[k] = _error(f"input '{bad[0]}' holds NaN or inf")
                continue
            groups.setdefault(tuple(x.shape for x in feeds.values()), []).append((k, feeds))
        for members in groups.values():
            for k, response in self.run(members):
                responses[k] = response
        return responses

    def run(self, members):
        """Requests whose inputs have the same shapes, as one batch: (index, response) of each."""
        feeds = {n: np.concatenate([f[n] for _, f in members]) if len(members) > 1 else members[0][1][n]
                 for n in self.inputs}
        try:
            ys = self.session.run_all(feeds)
        except Exception as e:  # noqa: BLE001  (every request of the batch gets the reason)
            return [(k, _error(_said(e))) for k, _ in members]
        out, start = [], 0
        for k, f in members:
            n = len(f[self.inputs[0]])
            out.append((k, pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(ys[name][start:start + n])) for name in self.outputs])))
            start += n
        return out

    def finalize(self):
        self.session.close()


def _said(e: Exception) -> str:
    """An error in the words `run` and serve's HTTP front use: an input the model cannot take (a size
    outside its valid sizes: the nearest named) is named as the front names it."""
    from resgraph.errors import DataError, ResgraphError
    if isinstance(e, DataError):
        return f"input '{e.file}': {e.message}; {e.hint}"
    if isinstance(e, ResgraphError):
        return f"{e.file}: {e.message}; {e.hint}"
    return f"{type(e).__name__}: {e}"


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"resgraph: {message}"))
