"""The deployment contract: what a client sends to a compiled model and what it gets back, as the
first and last nodes of its model.onnx (compile --input, --output).

    --input fp32         [N, C, H, W] float32, preprocessed by the client (the default)
    --input fp16         [N, C, H, W] float16, preprocessed: Cast to float32 first
    --input uint8-nchw   [N, C, H, W] uint8 raw pixels: Cast, then x * (1 / (255 std)) + (-mean / std)
    --input uint8-nhwc   [N, H, W, C] uint8 raw pixels, as a decoder gives them: Cast, Transpose, the same
    --output fp16        every output Cast to float16 last (half the bytes back)

For uint8 the preprocess's scale (1/255), mean and std become one multiply and one add per channel,
exact to float32 rounding. They are not folded into the first conv: its zero padding pads the
normalised image, and folded it would pad raw pixels instead, which differs at the borders. The
resize and the crop stay with the client, since they depend on each image's size.

Pre: `model` is lower.build's (or a Q/DQ model of the same inputs and outputs): float32 inputs and
outputs named as the manifest's. Post: the same model behind the contract; the manifest's
TensorInfos say what it now takes and gives (`infos`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from onnx import TensorProto, helper, numpy_helper

from ...manifest import scale_shift

INPUTS = ("fp32", "fp16", "uint8-nchw", "uint8-nhwc")
OUTPUTS = ("fp32", "fp16")
_DTYPE = {"fp32": "float32", "fp16": "float16", "uint8-nchw": "uint8", "uint8-nhwc": "uint8"}
_ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}


@dataclass(frozen=True)
class Contract:
    input: str = "fp32"
    output: str = "fp32"

    def over(self, spec: tuple) -> "Contract":
        """This contract where it is set (compile's flags), the spec's (`input: {dtype, layout}`,
        `output: {dtype}`) where it is None."""
        return Contract(self.input or spec[0], self.output or spec[1])

    @property
    def default(self) -> bool:
        return (self.input, self.output) == ("fp32", "fp32")

    @property
    def raw(self) -> bool:
        """Raw pixels in: the preprocess's normalisation is in the graph."""
        return self.input.startswith("uint8")


def infos(contract: Contract, inputs: tuple, outputs: tuple) -> tuple[tuple, tuple]:
    """The manifest's inputs and outputs under the contract: dtype, and the image inputs' layout
    (an image input is [batch, C, H, W] with C 1 or 3; the others keep float32 and their shape)."""
    def one(t):
        if not is_image(t.shape[1:]):
            return t
        if contract.input == "uint8-nhwc":
            b, c, h, w = t.shape
            return replace(t, shape=(b, h, w, c), dtype="uint8", layout="nhwc")
        return replace(t, dtype=_DTYPE[contract.input])
    return tuple(one(t) for t in inputs), tuple(replace(t, dtype=_DTYPE[contract.output]) for t in outputs)


def is_image(sample: tuple) -> bool:
    return len(sample) == 3 and sample[0] in (1, 3)


def apply(model, contract: Contract, inputs: tuple, outputs: tuple, preprocess: dict) -> None:
    """Put `model` behind `contract`, in place. `inputs`/`outputs`: the manifest's TensorInfos under
    it (infos); `preprocess`: the manifest's (its mean and std)."""
    g = model.graph
    head = []
    for t in inputs:
        if t.dtype == "float32":
            continue
        inner = f"{t.name}/{'normalised' if contract.raw else 'float'}"
        for n in g.node:
            n.input[:] = [inner if i == t.name else i for i in n.input]
        head += _normalise(t, inner, preprocess) if contract.raw else \
            [helper.make_node("Cast", [t.name], [inner], name=f"{t.name}/float", to=TensorProto.FLOAT)]
        vi = next(v for v in g.input if v.name == t.name)
        vi.type.tensor_type.elem_type = _ELEM[t.dtype]
        if t.layout == "nhwc":
            dims = vi.type.tensor_type.shape.dim
            order = [dims[0], dims[2], dims[3], dims[1]]
            copies = [type(d)() for d in order]
            for new, old in zip(copies, order):
                new.CopyFrom(old)
            del dims[:]
            dims.extend(copies)
        if contract.raw:
            g.initializer.extend(_stats(t, preprocess))
    for t in outputs:
        if t.dtype == "float16":
            _half_output(g, t.name)
    nodes = head + list(g.node)
    del g.node[:]
    g.node.extend(nodes)


def _normalise(t, inner: str, preprocess: dict) -> list:
    x = t.name
    nodes = [helper.make_node("Cast", [x], [f"{x}/float"], name=f"{x}/float", to=TensorProto.FLOAT)]
    if t.layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [f"{x}/float"], [f"{x}/nchw"], name=f"{x}/nchw", perm=[0, 3, 1, 2]))
    src = nodes[-1].output[0]
    nodes.append(helper.make_node("Mul", [src, f"{x}/scale"], [f"{x}/scaled"], name=f"{x}/scale"))
    nodes.append(helper.make_node("Add", [f"{x}/scaled", f"{x}/shift"], [inner], name=f"{x}/shift"))
    return nodes


def _stats(t, preprocess: dict) -> list:
    c = t.chw[0]
    scale, shift = scale_shift(c, preprocess)
    return [numpy_helper.from_array(scale.reshape(1, c, 1, 1), f"{t.name}/scale"),
            numpy_helper.from_array(shift.reshape(1, c, 1, 1), f"{t.name}/shift")]


def _half_output(g, name: str) -> None:
    """The output `name` computed as `name/fp32`, then Cast to float16 under its own name."""
    inner = f"{name}/fp32"
    for n in g.node:
        n.output[:] = [inner if o == name else o for o in n.output]
        n.input[:] = [inner if i == name else i for i in n.input]
    g.node.append(helper.make_node("Cast", [inner], [name], name=f"{name}/fp16", to=TensorProto.FLOAT16))
    vi = next(v for v in g.output if v.name == name)
    vi.type.tensor_type.elem_type = TensorProto.FLOAT16


def check(contract: Contract, inputs: tuple, preprocess: dict, name: str) -> None:
    """OptionError where the contract does not fit the model: raw pixels need an image input, and a
    model with size variables must not pad raw pixels (its padding is the normalised image's zero)."""
    from ...errors import OptionError
    if contract.input not in INPUTS or contract.output not in OUTPUTS:
        raise OptionError.at("--input" if contract.input not in INPUTS else "--output",
                             f"unknown contract {contract.input if contract.input not in INPUTS else contract.output!r}",
                             f"--input {'|'.join(INPUTS)}, --output {'|'.join(OUTPUTS)}")
    images = [t for t in inputs if is_image(t.shape[1:])]
    if contract.input != "fp32" and not images:
        raise OptionError.at("--input", f"{name} takes no image input ([C, H, W] with 1 or 3 channels): "
                             f"{', '.join(f'{t.name} {list(t.shape[1:])}' for t in inputs)}",
                             "--input sets the dtype of image inputs; leave it out for this model")
    if contract.raw and any(t.dynamic for t in images) and preprocess.get("fit", "pad") == "pad":
        raise OptionError.at("--input", f"{name} has size variables and preprocess fit: pad, which pads the "
                             "normalised image with zeros; raw uint8 pixels cannot carry that padding",
                             "set preprocess: {fit: resize} in the spec, or compile with --input fp32")
