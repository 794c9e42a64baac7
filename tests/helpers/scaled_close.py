"""Float tolerance for sums of many terms: the absolute part scaled by the reference's largest entry."""

import torch

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


def assert_close_scaled(mine: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, **kwargs) -> None:
    """``torch.testing.assert_close`` at ``TOL[dtype]`` with atol times max(1, max |ref|): a gradient
    summed over many reads (a sub-key's, several tens here) carries rounding of its own size, not of 1,
    and its near-zero entries are differences of such sums."""
    tol = TOL[dtype]
    scale = max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(mine, ref, rtol=tol["rtol"], atol=tol["atol"] * scale, **kwargs)
