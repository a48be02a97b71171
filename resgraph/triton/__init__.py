"""Serving on NVIDIA Triton Inference Server: a compiled folder -> a model repository (export.py),
and a real Triton server on it (server.py: the Triton core that nvidia-pytriton bundles). No
home-made server: Triton does the dynamic batching, instances, metrics, HTTP and gRPC."""
