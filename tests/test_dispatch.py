"""Backend selection: argument > use_backend > ATTN_BACKEND > auto; named-but-unusable
raises with reasons; auto that finds nothing lists every backend; `python -m attn info`."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import attn
from attn import dispatch
from attn.backend import Backend
from attn.errors import BackendUnavailableError, NoBackendError


class Fake(Backend):
    device_types = frozenset({"cpu", "cuda"})

    def __init__(self, name, reasons=(), unsupported=(), dtypes=None):
        self.name, self._reasons, self._unsupported = name, list(reasons), list(unsupported)
        self.dtypes = dtypes
        self.calls = 0

    def unavailable_reasons(self):
        return list(self._reasons)

    def not_supported_reasons(self, problem):
        return super().not_supported_reasons(problem) + list(self._unsupported)

    def run_shared_prefix(self, p):
        self.calls += 1
        return torch.zeros_like(p.q), torch.zeros(p.q.shape[:2])


@pytest.fixture
def fakes(monkeypatch):
    """Replace the registry with three fakes in auto order: tk (unavailable), triton
    (available but not for float64), torch (available)."""
    monkeypatch.setattr(dispatch, "_registry", {})
    monkeypatch.delenv("ATTN_BACKEND", raising=False)
    f = {"tk": Fake("tk", ["no CUDA device"]), "triton": Fake("triton", dtypes=frozenset({torch.float16, torch.float32})),
         "torch": Fake("torch")}
    for b in f.values():
        dispatch.register(b)
    return f


def q3(dtype=torch.float32):
    q = torch.randn(2, 2, 8, dtype=dtype)
    return q, torch.randn(3, 2, 8, dtype=dtype), torch.randn(3, 2, 8, dtype=dtype)


def test_auto_takes_first_that_supports(fakes):
    attn.shared_prefix_attention(*q3())
    assert fakes["triton"].calls == 1
    attn.shared_prefix_attention(*q3(torch.float64))
    assert fakes["torch"].calls == 1


def test_precedence(fakes, monkeypatch):
    monkeypatch.setenv("ATTN_BACKEND", "triton")
    with attn.use_backend("torch"):
        attn.shared_prefix_attention(*q3())
        assert fakes["torch"].calls == 1
        attn.shared_prefix_attention(*q3(), backend="triton")
        assert fakes["triton"].calls == 1
        with attn.use_backend("auto"):
            attn.shared_prefix_attention(*q3())
            assert fakes["triton"].calls == 2
        attn.shared_prefix_attention(*q3())
        assert fakes["torch"].calls == 2  # the inner context was restored
    attn.shared_prefix_attention(*q3(torch.float32))
    assert fakes["triton"].calls == 3  # ATTN_BACKEND
    monkeypatch.setenv("ATTN_BACKEND", "TORCH ")
    attn.shared_prefix_attention(*q3())
    assert fakes["torch"].calls == 3


def test_named_but_unusable_raises_with_reasons_never_falls_back(fakes):
    with pytest.raises(BackendUnavailableError, match="no CUDA device") as e:
        attn.shared_prefix_attention(*q3(), backend="tk")
    assert e.value.backend == "tk" and "argument" in str(e.value)
    with attn.use_backend("triton"), pytest.raises(BackendUnavailableError, match="dtype float64 not supported"):
        attn.shared_prefix_attention(*q3(torch.float64))
    assert all(f.calls == 0 for f in fakes.values())


def test_auto_with_nothing_lists_every_backend(fakes):
    fakes["torch"]._unsupported = ["nope"]
    with pytest.raises(NoBackendError) as e:
        attn.shared_prefix_attention(*q3(torch.float64))
    assert set(e.value.reasons) == {"tk", "triton", "torch"}
    assert "no CUDA device" in str(e.value) and "nope" in str(e.value)


def test_unknown_names_are_value_errors(fakes, monkeypatch):
    with pytest.raises(ValueError, match="unknown attn backend 'cuda'"):
        attn.shared_prefix_attention(*q3(), backend="cuda")
    with pytest.raises(ValueError):
        with attn.use_backend("flash"):
            pass
    monkeypatch.setenv("ATTN_BACKEND", "nope")
    with pytest.raises(ValueError, match="nope"):
        attn.shared_prefix_attention(*q3())


def test_available_backends_lists_only_available(fakes):
    assert attn.available_backends() == ["triton", "torch"]


def test_real_registry_is_honest():
    all_ = attn.backends()
    assert list(all_)[:3] == ["tk", "triton", "torch"]
    assert "torch" in attn.available_backends()
    for name, b in all_.items():
        # Available exactly when there are no reasons; every reason is readable text.
        assert b.is_available() == (not b.unavailable_reasons())
        assert all(isinstance(r, str) and r for r in b.unavailable_reasons())
    if not torch.cuda.is_available():
        assert "tk" not in attn.available_backends()


def test_info_command_lists_every_backend_with_reasons():
    out = subprocess.run([sys.executable, "-m", "attn", "info"], capture_output=True, text=True, check=True).stdout
    for name, b in attn.backends().items():
        assert name in out
        for r in b.unavailable_reasons():
            assert r in out
    assert "torch" in out and "GPU" in out and "selection" in out


def test_import_compiles_nothing_and_needs_no_gpu():
    # Building goes through torch.utils.cpp_extension: importing attn must not load it.
    code = ("import sys, attn; attn.backends(); "
            "assert 'torch.utils.cpp_extension' not in sys.modules, 'import attn loaded cpp_extension'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "", "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
