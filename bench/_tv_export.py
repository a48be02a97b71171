"""torch.onnx.export of a torchvision model, as bench/onnx_speed.py measures it (imports torch and torchvision only).

    python export.py NAME STATE_DICT.pth OUT.onnx dynamo|legacy

onnx_speed.py copies this file into its work folder as export.py and times that whole process; in process
it calls export() itself.  Both exporters see an example batch of EXAMPLE_BATCH with the batch dimension
dynamic (dynamo: dynamic_shapes Dim("batch"); legacy: dynamic_axes); all other options are torch's defaults.
"""
import sys

import torch
import torchvision

EXAMPLE_BATCH = 2          # the exporters' example input: batch 1 would be specialised by torch.export


def export(model, x, out, mode: str) -> None:
    """model (in eval mode) on the example batch x to the ONNX file `out`; mode "dynamo" or "legacy"."""
    if mode == "dynamo":
        torch.onnx.export(model, (x,), str(out), dynamo=True, input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def main() -> None:
    name, weights, out, mode = sys.argv[1:5]
    model = getattr(torchvision.models, name)()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    export(model, torch.randn(EXAMPLE_BATCH, 3, 224, 224), out, mode)


if __name__ == "__main__":
    main()
