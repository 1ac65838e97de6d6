"""Layer ``example.scale``: multiplies every feature by a learned factor.

Example:
    >>> import numpy as np
    >>> from ekn_core.node import model_manager
    >>> from ekn_core.plugins import registry
    >>> _ = model_manager.newmodel("doc_example_scale")
    >>> inp = registry("layers").get("input")((1, 2, 3, 3), "b,f,y,x")
    >>> out = Scale(inp, init_value=2.0)
    >>> out(np.ones((1, 2, 3, 3), "float32"))[0, :, 0, 0].tolist()
    [2.0, 2.0]
"""

from __future__ import annotations

from typing import Any

from ekn_core.node import Node
from ekn_core.shapes import TaggedShape


class Scale(Node):
    """Multiplies each feature channel by its own learned factor.

    Args:
        parent: Input node (any tags with an ``f`` axis).
        init_value: Initial value of every factor.
        name: Node name.
        print_repr: Log the node description.
    """

    def __init__(self, parent: Node, init_value: float = 1.0, name: str = "scale", print_repr: bool = False):
        super().__init__(parent, name, print_repr)
        self.add_param("scale", shape=(parent.shape["f"],), init="const", scale=float(init_value), weight_decay=0.0)

    def _compute_shape(self, parent_shapes: list[TaggedShape]) -> TaggedShape:
        return parent_shapes[0]

    def _compute_cost(self) -> float:
        return float(self.parents[0].shape.stripnone_prod)

    def _forward(self, inputs: list[Any], training: bool) -> Any:
        return inputs[0] * self.params["scale"].variable
