"""TensorRT engines from compiled folders: model.onnx + manifest -> model.engine + engine.json.

    options.py      precisions, batch profile, build options; how a precision maps to TensorRT flags
    profile.py      the optimisation profile: every input's MIN, OPT, MAX shapes (--shapes), against the model
    engine_json.py  engine.json, and the check that an engine can run here (before deserialising)
    gpu.py          the GPU's name and compute capability (nvidia-smi, else cuda-python)
    build.py        the build itself (tensorrt's Python API), timing cache, publishing into a folder

Imports only the artifacts module and tensorrt (lazily, in build.py): no IR, no torch. The runtime's
tensorrt back end (resgraph/runtime/tensorrt.py) runs what this builds.
"""
