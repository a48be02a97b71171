"""Back ends (PyTorch, ONNX, TensorRT) import their heavy libraries lazily, inside themselves."""
