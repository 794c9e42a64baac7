"""Shared check for the scan tests: values and input gradients of two computations agree."""

import torch


def assert_values_and_grads_match(y: torch.Tensor, ref: torch.Tensor, inputs: dict, atol: float) -> None:
    """max |y - ref| <= atol, and the same for the gradient of every tensor in ``inputs`` under one
    random output gradient."""
    assert (y - ref).abs().max() <= atol
    grad_out = torch.randn_like(y)
    names = list(inputs)
    grads = torch.autograd.grad(y, [inputs[n] for n in names], grad_out, retain_graph=True)
    ref_grads = torch.autograd.grad(ref, [inputs[n] for n in names], grad_out, retain_graph=True)
    for name, got, want in zip(names, grads, ref_grads):
        assert (got - want).abs().max() <= atol, name
