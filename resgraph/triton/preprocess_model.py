"""The first step of `resgraph export triton --with-preprocess`'s ensemble, on Triton's Python backend
(copied as <name>_preprocess/N/model.py, the compiled folder's manifest.json beside it).

Each request holds encoded images (TYPE_STRING, [n, 1]: JPEG, PNG... one a row); each is decoded and
preprocessed as `resgraph run` does a file (resgraph.triton.ensemble.decoder, from the manifest's
preprocess), and the request gets the model's input back, [n, *dims]. A request whose image cannot
be decoded, or whose images come to different sizes, gets an error naming it; the others go on.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        from resgraph.triton.ensemble import decoder
        self.decode = decoder(os.path.join(args["model_repository"], args["model_version"]))

    def execute(self, requests):
        return [self.one(r) for r in requests]

    def one(self, request):
        from resgraph.runtime.preprocess import InputError
        data = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().reshape(-1)
        samples = []
        for k, b in enumerate(data):
            try:
                samples.append(self.decode(bytes(b)))
            except InputError as e:
                return _error(f"image {k}: {e}")
        shapes = sorted({x.shape for x in samples})
        if len(shapes) > 1:
            return _error(f"the images of one request come to different sizes {shapes}: send them in "
                          "separate requests")
        return pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.stack(samples))])


def _error(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"resgraph: {message}"))
