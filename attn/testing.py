"""The spec's numerical criterion, shared by the tests, ``bench/`` and ``compare``.

``max|X - ref64| <= 2 * max|torch_lowp - ref64| + atol(dtype)`` for ``out`` and for ``lse``,
where ``ref64`` is the naive float64 oracle and ``torch_lowp`` the same math with inputs and
softmax probabilities in the input dtype (flash-attention's criterion). Rows that attend to
no key must give exactly ``out = 0`` and ``lse = -inf``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .reference import reference

#: absolute slack on ``out`` per input dtype: about one unit in the last place at 1.0.
OUT_ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
#: absolute slack on ``lse`` (always float32 or float64).
LSE_ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}


@dataclass
class Agreement:
    """How far a result is from the float64 oracle, next to what the criterion allows."""

    out_err: float
    out_bound: float
    lse_err: float
    lse_bound: float
    empty_rows_ok: bool
    finite: bool

    @property
    def ok(self) -> bool:
        return (self.finite and self.empty_rows_ok and self.out_err <= self.out_bound
                and self.lse_err <= self.lse_bound)

    def __str__(self) -> str:
        return (f"out err {self.out_err:.3e} (bound {self.out_bound:.3e}), lse err {self.lse_err:.3e} "
                f"(bound {self.lse_bound:.3e}), empty rows ok {self.empty_rows_ok}, finite {self.finite}")


def _err(x: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> float:
    d = (x.double() - ref.double()).abs()
    d = d[keep] if keep is not None else d
    return float(d.max()) if d.numel() else 0.0


class Oracle:
    """``ref64`` and ``torch_lowp`` of one problem, computed once, to judge many results."""

    def __init__(self, problem):
        self.problem = problem
        self.dtype = problem.dtype
        self.ref_out, self.ref_lse = reference(problem)
        self.empty = torch.isinf(self.ref_lse)  # [B, Hq]: rows with no key
        if self.dtype == torch.float64:
            self.lowp_out_err = self.lowp_lse_err = 0.0
        else:
            lo, ll = reference(problem, lowp=True)
            self.lowp_out_err = _err(lo, self.ref_out, ~self.empty)
            self.lowp_lse_err = _err(ll, self.ref_lse, ~self.empty)

    def judge(self, out: torch.Tensor, lse: torch.Tensor) -> Agreement:
        keep = ~self.empty.to(out.device)
        finite = bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse[keep]).all())
        empty_ok = True
        if self.empty.any():
            e = self.empty.to(out.device)
            empty_ok = bool((out[e] == 0).all()) and bool(torch.isneginf(lse[e]).all())
        return Agreement(
            out_err=_err(out, self.ref_out.to(out.device), keep[..., None].expand_as(out)),
            out_bound=2 * self.lowp_out_err + OUT_ATOL[self.dtype],
            lse_err=_err(lse, self.ref_lse.to(lse.device), keep),
            lse_bound=2 * self.lowp_lse_err + LSE_ATOL[self.dtype],
            empty_rows_ok=empty_ok,
            finite=finite,
        )
