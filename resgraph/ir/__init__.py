"""The IR: plain frozen nodes in a graph that prints itself, and the expansion of a Spec into one."""
from .expand import expand
from .graph import INPUT, Graph, Node, Projection, Settings, freeze

__all__ = ["INPUT", "Graph", "Node", "Projection", "Settings", "expand", "freeze"]
