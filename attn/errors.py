"""Error types raised by :mod:`attn`.

Malformed inputs raise the built-in :class:`ValueError` / :class:`TypeError`
(naming the argument, what it got and what was expected). The classes here cover
what is not a malformed input: a backend that cannot run, and a KV-cache pool that
cannot hold a request.
"""
from __future__ import annotations


class AttnError(Exception):
    """Base class of every error specific to :mod:`attn`."""


class BackendUnavailableError(AttnError, RuntimeError):
    """A backend asked for by name cannot run these inputs on this machine.

    ``reasons`` lists why, in the backend's own words.
    """

    def __init__(self, backend: str, reasons: list[str], op: str | None = None):
        self.backend = backend
        self.reasons = list(reasons)
        self.op = op
        what = f" for {op}" if op else ""
        lines = "\n".join(f"  - {r}" for r in self.reasons)
        super().__init__(f"attn backend {backend!r} cannot run{what}:\n{lines}")


class NoBackendError(AttnError, RuntimeError):
    """``"auto"`` selection found no backend able to run the inputs.

    ``reasons`` maps every backend name to its reasons.
    """

    def __init__(self, reasons: dict[str, list[str]], op: str | None = None):
        self.reasons = {k: list(v) for k, v in reasons.items()}
        self.op = op
        what = f" for {op}" if op else ""
        body = "\n".join(
            f"  {name}:\n" + "\n".join(f"    - {r}" for r in rs) for name, rs in self.reasons.items()
        )
        super().__init__(f"no attn backend can run{what}:\n{body}")


class CacheFullError(AttnError, RuntimeError):
    """The :class:`~attn.PrefixKVCache` chunk pool cannot hold the request.

    The cache is left exactly as it was before the call.
    """
