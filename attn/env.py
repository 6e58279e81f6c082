"""Switches read from the environment on every op call, at the cost of a dict lookup.

The backends read their switches (``ATTN_BACKEND``, the ``ATTN_TK_*`` tuning switches) at each
call, so that a test or a benchmark can change them between calls. ``os.environ.get`` encodes
the name and decodes through ``collections.abc``: about 0.6 µs a read, and a tk call read 22
of them, a quarter of its Python time. :func:`getenv` reads the same mapping directly.
"""
from __future__ import annotations

import os
from typing import Optional

_POSIX = os.name == "posix"
_KEYS: dict = {}  # name -> its filesystem-encoded bytes


def getenv(name: str, default: Optional[str] = None) -> Optional[str]:
    """``os.environ.get(name, default)``."""
    # os.environ keeps its contents in ``_data``, filesystem-encoded bytes on POSIX; setting or
    # deleting through os.environ (monkeypatch.setenv included) updates it, so this sees what
    # os.environ.get would. Elsewhere (Windows: upper-cased str keys), or should that ever
    # change, os.environ itself.
    data = getattr(os.environ, "_data", None)
    if not _POSIX or type(data) is not dict:
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = os.fsencode(name)
    value = data.get(key)
    return default if value is None else os.fsdecode(value)
