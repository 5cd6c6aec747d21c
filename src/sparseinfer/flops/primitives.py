"""FLOP counts of the building blocks. A multiply-add counts 2; elementwise ops count 1 per element.

`matmul` is what `torch.utils.flop_counter.FlopCounterMode` counts; `elementwise` is what it ignores.
Every formula is a pure function of shapes and iteration counts.
"""

from __future__ import annotations

from typing import NamedTuple


class Flops(NamedTuple):
    """A FLOP count split into matrix products (checked against torch's counter) and elementwise work."""

    matmul: int = 0
    elementwise: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise

    def __add__(self, other: object) -> Flops:  # type: ignore[override]
        if not isinstance(other, Flops):
            return NotImplemented
        return Flops(self.matmul + other.matmul, self.elementwise + other.elementwise)

    def __mul__(self, factor: object) -> Flops:  # type: ignore[override]
        if not isinstance(factor, int):
            return NotImplemented
        return Flops(self.matmul * factor, self.elementwise * factor)

    __rmul__ = __mul__


def matmul(m: int, k: int, n: int) -> Flops:
    """(m, k) @ (k, n): 2 m k n."""
    return Flops(matmul=2 * m * k * n)


def elementwise(n_elements: int, ops_per_element: int = 1) -> Flops:
    """`ops_per_element` arithmetic operations on each of `n_elements` values."""
    return Flops(elementwise=n_elements * ops_per_element)


def linear_forward(batch: int, d_in: int, d_out: int, bias: bool) -> Flops:
    """y = x W^T (+ b)."""
    return matmul(batch, d_in, d_out) + (elementwise(batch * d_out) if bias else Flops())


def linear_backward(batch: int, d_in: int, d_out: int, bias: bool, input_grad: bool) -> Flops:
    """Gradients of a linear layer: weights always, the input only when something upstream needs it."""
    grads = matmul(d_out, batch, d_in)
    if input_grad:
        grads = grads + matmul(batch, d_out, d_in)
    if bias:
        grads = grads + elementwise(batch * d_out)
    return grads
