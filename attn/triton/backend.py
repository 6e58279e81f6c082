"""The ``triton`` backend (kernels land with the Triton issue)."""
from __future__ import annotations

from ..backend import Backend


class TritonBackend(Backend):
    name = "triton"

    def unavailable_reasons(self) -> list[str]:
        return ["not implemented yet: the Triton kernels have not landed"]
