"""ECA (efficient channel attention, Wang et al. 2020) as a resgraph op plugin.

op.py is what `resgraph check` imports (resgraph.ops only, no torch); torch_op.py and onnx_op.py are
imported by the back end that lowers the op, when it does.
"""
