"""A resgraph compiled folder served by Triton's Python backend (`resgraph export triton --platform
python` copies this file as <name>/1/model.py, the folder as <name>/1/artifact/).

It runs the same Session as `resgraph run` (ONNX Runtime on CPU or CUDA, TensorRT where present:
the config's `resgraph_backend` parameter, default auto), so one repository serves on machines
without NVIDIA's containers. With dynamic batching Triton hands execute() several requests at once:
they run as one batch and each response gets its own rows back.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input, self.output = config["input"][0]["name"], config["output"][0]["name"]
        backend = config.get("parameters", {}).get("resgraph_backend", {}).get("string_value", "auto")
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        from resgraph.runtime import Options, open_session
        device = int(args.get("model_instance_device_id") or 0)   # each GPU instance on its own GPU
        self.session = open_session(folder, backend, Options(device_id=device))

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        # a request holding NaN or inf is refused, as `resgraph run` refuses such an input; the others run
        ok = [bool(np.isfinite(x).all()) for x in xs]
        good = [x for x, fine in zip(xs, ok) if fine]
        try:
            y = (good[0] if len(good) == 1 else np.concatenate(good)) if good else None
            y = self.session.run(y) if good else None
        except Exception as e:  # noqa: BLE001  (every request of the batch gets the reason)
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"resgraph: {e}")) for _ in requests]
        responses, start = [], 0
        for x, fine in zip(xs, ok):
            if not fine:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"resgraph: input '{self.input}' holds NaN or inf")))
                continue
            rows = np.ascontiguousarray(y[start:start + len(x)])
            start += len(x)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, rows)]))
        return responses

    def finalize(self):
        self.session.close()
