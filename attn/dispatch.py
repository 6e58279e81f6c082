"""Backend registry and selection: ``backend=`` > ``use_backend`` > ``ATTN_BACKEND`` > auto.

``auto`` takes the first of tk -> triton -> torch that is available and supports the
inputs. A backend named explicitly that cannot run raises with its reasons; nothing ever
falls back silently.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

from .env import getenv
from .backend import Backend
from .errors import BackendUnavailableError, NoBackendError
from .problems import Problem

AUTO = "auto"
#: auto-selection order
ORDER = ("tk", "triton", "torch")

_registry: dict[str, Backend] = {}
_context: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("attn_backend", default=None)


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend instance under ``backend.name``."""
    _registry[backend.name] = backend
    return backend


def _ensure_registered() -> None:
    if _registry:
        return
    # Importing these modules compiles nothing: kernels build or JIT on first use.
    from .torch_backend import TorchBackend
    from .triton.backend import TritonBackend
    from .tk_ext.backend import TKBackend

    for cls in (TKBackend, TritonBackend, TorchBackend):
        register(cls())


def backends() -> dict[str, Backend]:
    """Every registered backend, by name, in auto-selection order."""
    _ensure_registered()
    known = [n for n in ORDER if n in _registry] + [n for n in _registry if n not in ORDER]
    return {n: _registry[n] for n in known}


def get_backend(name: str) -> Backend:
    """The backend instance called ``name``; ``ValueError`` for an unknown name."""
    _ensure_registered()
    backend = _registry.get(name)  # not backends(): every op call with a named backend comes here
    if backend is None:
        raise ValueError(f"unknown attn backend {name!r}: choose one of {sorted(backends())} or 'auto'")
    return backend


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, in auto-selection order."""
    return [n for n, b in backends().items() if b.is_available()]


def _check_name(name: Optional[str], source: str) -> Optional[str]:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a backend name (str), got {type(name).__name__}")
    name = name.strip().lower()
    if name != AUTO:
        get_backend(name)  # raises ValueError for an unknown name
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the ``with`` block on backend ``name`` (or ``"auto"``).

    Like PyTorch's ``sdpa_kernel``: nests, restores the previous choice on exit, and is
    overridden by an op's own ``backend=`` argument.

    Examples
    --------
    >>> with attn.use_backend("torch"):
    ...     out = attn.shared_prefix_attention(q, k, v)
    """
    token = _context.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context.reset(token)


def requested_backend(argument: Optional[str] = None) -> tuple[str, str]:
    """The backend name in force and where it came from (``argument``, ``use_backend``,
    ``ATTN_BACKEND`` or ``default``)."""
    if argument is not None:
        return _check_name(argument, "backend"), "argument"
    ctx = _context.get()
    if ctx is not None:
        return ctx, "use_backend"
    env = getenv("ATTN_BACKEND")
    if env:
        return _check_name(env, "ATTN_BACKEND"), "ATTN_BACKEND"
    return AUTO, "default"


def select(problem: Problem, argument: Optional[str] = None) -> Backend:
    """The backend that will run ``problem``, or the error that says why none can."""
    name, source = requested_backend(argument)
    if name != AUTO:
        backend = get_backend(name)
        reasons = backend.not_supported_reasons(problem)
        if reasons:
            raise BackendUnavailableError(name, reasons + [f"(asked for by {source})"], problem.op)
        return backend
    all_reasons = {}
    for bname, backend in backends().items():
        reasons = backend.not_supported_reasons(problem)
        if not reasons:
            return backend
        all_reasons[bname] = reasons
    raise NoBackendError(all_reasons, problem.op)
