"""Pure FLOP accounting: `primitives` (matmul, elementwise, linear layers) and one module per encoder family."""

from sparseinfer.flops.primitives import Flops, elementwise, linear_backward, linear_forward, matmul

__all__ = ["Flops", "elementwise", "linear_backward", "linear_forward", "matmul"]
