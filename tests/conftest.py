"""Test options and the backend parametrization shared by every test module.

``--backend NAME`` (repeatable) restricts backend-parametrized tests to those backends;
unavailable backends skip with their own reasons.
"""
from __future__ import annotations

import pytest
import torch

import attn


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME",
                     help="run backend-parametrized tests only on this backend (repeatable): tk, triton, torch")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips with the reason otherwise)")
    chosen = config.getoption("--backend")
    unknown = sorted(set(chosen) - set(attn.backends()))
    if unknown:
        raise pytest.UsageError(f"--backend: unknown backend(s) {unknown}; known: {sorted(attn.backends())}")


def selected_backends(config) -> list[str]:
    chosen = config.getoption("--backend")
    return [n for n in attn.backends() if not chosen or n in chosen]


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", selected_backends(metafunc.config))


def require_backend(name: str):
    """The backend instance; skips with the backend's own reasons when it cannot run here."""
    b = attn.get_backend(name)
    reasons = b.unavailable_reasons()
    if reasons:
        pytest.skip(f"backend {name} unavailable: " + "; ".join(reasons))
    return b


@pytest.fixture
def backend(backend_name):
    return require_backend(backend_name)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device():
    return DEVICE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
