"""The ``tk`` backend (kernels land with the ThunderKittens issue)."""
from __future__ import annotations

from ..backend import Backend


class TKBackend(Backend):
    name = "tk"

    def unavailable_reasons(self) -> list[str]:
        return ["not implemented yet: the ThunderKittens kernels have not landed"]
