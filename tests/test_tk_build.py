"""The tk extension's build: availability reasons, THUNDERKITTENS_ROOT, cache keys, the nvcc
flags and source trees a build takes, concurrent and failed builds, and what `python -m attn
info` says about them. No GPU or nvcc needed: builds are faked where one would run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from attn.tk_ext import backend as tkb
from attn.tk_ext import build



def test_no_cuda_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reasons = tkb.TKBackend().unavailable_reasons() if build._module is None else build.environment_reasons()
    assert any("no CUDA device" in r for r in reasons)


def test_capability_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    reasons = build.environment_reasons()
    assert any("compute capability 8.0 is not 9.0" in r for r in reasons)


def test_tk_root_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("THUNDERKITTENS_ROOT", str(tmp_path / "nowhere"))
    assert build.tk_root() is None
    msg = " ".join(build.environment_reasons())
    assert "THUNDERKITTENS_ROOT" in msg and build.TK_COMMIT in msg and "git clone" in msg


def test_tk_root_env_and_cwd(monkeypatch, tmp_path):
    fake = tmp_path / "tk"
    (fake / "include").mkdir(parents=True)
    (fake / "include" / "kittens.cuh").write_text("// stub\n")
    monkeypatch.setenv("THUNDERKITTENS_ROOT", str(fake))
    assert build.tk_root() == fake.resolve()
    # Without the variable: the repository's third_party first, then the current directory's.
    monkeypatch.delenv("THUNDERKITTENS_ROOT")
    monkeypatch.setattr(build, "REPO_ROOT", tmp_path / "elsewhere")
    cwd = tmp_path / "work"
    (cwd / "third_party").mkdir(parents=True)
    (cwd / "third_party" / "ThunderKittens").symlink_to(fake)
    monkeypatch.chdir(cwd)
    assert build.tk_root() == fake.resolve()


def test_cache_key_depends_on_arch_torch_and_sources(monkeypatch):
    root = build.tk_root()
    k90 = build.cache_key("sm_90", root)
    assert k90 == build.cache_key("sm_90", root)
    assert k90 != build.cache_key("sm_100", root)
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert k90 != build.cache_key("sm_90", root)
    monkeypatch.undo()
    real = build._hashed_files()
    monkeypatch.setattr(build, "_hashed_files", lambda: real[:-1])
    assert k90 != build.cache_key("sm_90", root)


def test_extra_nvcc_flags_reach_the_build_and_the_cache_key(monkeypatch, tmp_path):
    root = build.tk_root() or tmp_path
    monkeypatch.delenv("ATTN_TK_NVCC_FLAGS", raising=False)
    plain = build.cache_key("sm_90", root)
    monkeypatch.setenv("ATTN_TK_NVCC_FLAGS", " -DATTN_TK_TRACE  -lineinfo ")
    assert build.nvcc_flags()[-2:] == ["-DATTN_TK_TRACE", "-lineinfo"]
    assert build.build_args(root, tmp_path, "k")["extra_cuda_cflags"][-2:] == ["-DATTN_TK_TRACE", "-lineinfo"]
    assert build.cache_key("sm_90", root) != plain


def test_another_source_dir_builds_from_its_files_under_its_own_key(monkeypatch, tmp_path):
    root = build.tk_root() or tmp_path
    monkeypatch.delenv("ATTN_TK_CSRC", raising=False)
    plain = build.cache_key("sm_90", root)
    other = tmp_path / "csrc"
    shutil.copytree(build.CSRC, other)
    monkeypatch.setenv("ATTN_TK_CSRC", str(other))
    assert build.cache_key("sm_90", root) == plain  # same bytes, same key
    (other / "stacked.cuh").write_text((other / "stacked.cuh").read_text() + "\n// B\n")
    assert build.cache_key("sm_90", root) != plain
    args = build.build_args(root, tmp_path, "k")
    assert args["sources"] and all(Path(s).parent == other.resolve() for s in args["sources"])
    assert str(other.resolve()) in args["extra_include_paths"]


def test_package_data_ships_every_kernel_source():
    """A wheel (not only an editable install) must carry csrc/: the extension builds from it."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["attn.tk_ext"]
    # setuptools globs each pattern from the package's directory ("*" stays in one directory)
    shipped = {p for pat in patterns for p in build.CSRC.parent.glob(pat)}
    files = {p for p in build.CSRC.iterdir() if p.is_file() and p.suffix in (".cu", ".cuh", ".cpp", ".h")}
    assert files and files <= shipped, sorted(p.name for p in files - shipped)


def test_info_names_extra_nvcc_flags(monkeypatch):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_NVCC_FLAGS", raising=False)
    assert "extra nvcc flags" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_NVCC_FLAGS", "-DATTN_TK_TRACE")
    assert TKBackend().versions()["extra nvcc flags"] == "-DATTN_TK_TRACE"


def test_info_names_another_source_dir(monkeypatch, tmp_path):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_CSRC", raising=False)
    assert "kernel sources" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_CSRC", str(tmp_path))
    assert TKBackend().versions()["kernel sources"] == str(tmp_path.resolve())


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    assert build.build_dir("abc") == tmp_path / "tk-abc"
    monkeypatch.delenv("ATTN_CACHE_DIR")
    assert build.build_dir("abc") == build.Path.home() / ".cache" / "attn" / "tk-abc"


def test_failed_build_reason_names_log(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "environment_reasons", lambda: [])
    monkeypatch.setattr(build, "_failure", None)
    assert build.unavailable_reasons() == []
    d = build.build_dir()
    d.mkdir(parents=True)
    (d / "FAILED").write_text(str(d / "build.log"))
    reasons = build.unavailable_reasons()
    assert len(reasons) == 1 and str(d / "build.log") in reasons[0]


def test_build_main_without_environment(monkeypatch, capsys):
    monkeypatch.setattr(build, "environment_reasons", lambda: ["no CUDA device (test)"])
    assert build.main([]) == 1
    assert "no CUDA device (test)" in capsys.readouterr().err


def test_build_args_flags(tmp_path):
    root = build.tk_root() or tmp_path
    args = build.build_args(root, tmp_path, "k")
    flags = " ".join(args["extra_cuda_cflags"])
    assert "arch=compute_90a,code=sm_90a" in flags and "-DKITTENS_HOPPER" in flags and "-std=c++20" in flags
    assert "-lcuda" in args["extra_ldflags"]
    assert str(root / "include") in args["extra_include_paths"]
    assert sorted(os.path.basename(s) for s in args["sources"]) == [
        "bindings.cpp", "chunk_attn.cu", "chunk_attn_dwg.cu", "merge.cu", "shared_prefix.cu", "shared_prefix_dwg.cu"]


def test_import_does_not_build():
    assert build._module is None or torch.cuda.is_available()


def _fake_build_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "environment_reasons", lambda: [])
    monkeypatch.setattr(build, "tk_root", lambda: tmp_path)
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_failure", None)


def test_concurrent_builds_are_serialised(monkeypatch, tmp_path):
    import threading
    import time

    from torch.utils import cpp_extension

    _fake_build_env(monkeypatch, tmp_path)
    state = {"inside": 0, "most": 0, "calls": 0}
    guard = threading.Lock()

    def fake_load(**kw):
        with guard:
            state["inside"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["inside"])
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0a"
        time.sleep(0.2)
        with guard:
            state["inside"] -= 1
        return type("Mod", (), {"__file__": kw["name"]})()

    monkeypatch.setattr(cpp_extension, "load", fake_load)

    def worker():
        # Each thread stands for a process: its own module cache, its own open of the lock file.
        build._module = None
        build.load()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["calls"] >= 1 and state["most"] == 1


def test_failed_build_writes_log_and_marker(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    _fake_build_env(monkeypatch, tmp_path)

    def broken(**kw):
        raise RuntimeError("nvcc: error: boom")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.raises(build.TKBuildError, match="build.log"):
        build.load()
    d = build.build_dir()
    assert "boom" in (d / "build.log").read_text()
    assert (d / "FAILED").is_file()
    monkeypatch.setattr(build, "_failure", None)  # a fresh process still sees the failure
    assert any(str(d / "build.log") in r for r in build.unavailable_reasons())
    with pytest.raises(build.TKBuildError, match="failed to build earlier"):
        build.load()


def test_info_names_tuning_switches(monkeypatch):
    for k in tkb.TUNING_SWITCHES:
        monkeypatch.delenv(k, raising=False)
    assert "tuning switches" not in tkb.TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_MERGE", "v4")
    monkeypatch.setenv("ATTN_TK_LSE_FILL", "1")
    assert tkb.TKBackend().versions()["tuning switches"] == "ATTN_TK_LSE_FILL=1 ATTN_TK_MERGE=v4"
    assert tkb.lse_fill()


def test_info_names_tuned_plan_costs(monkeypatch):
    from attn.tk_ext.backend import TKBackend

    monkeypatch.delenv("ATTN_TK_PLAN_COSTS", raising=False)
    assert "plan costs (row, kv, item, pair tile, pair item)" not in TKBackend().versions()
    monkeypatch.setenv("ATTN_TK_PLAN_COSTS", "1.2,0.5,1")
    assert "plan costs (row, kv, item, pair tile, pair item)" in TKBackend().versions()
