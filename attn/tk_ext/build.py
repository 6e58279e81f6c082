"""Building the ThunderKittens extension: JIT on first use, cached, safe across processes.

Nothing here compiles at import. :func:`load` builds (or reuses) the extension in a cache
directory keyed by the sources, torch/CUDA versions and GPU architecture, under a file lock
so that two processes building at once wait for each other instead of racing.
``python -m attn build`` calls :func:`main` to build ahead of time.

Environment
-----------
THUNDERKITTENS_ROOT : the ThunderKittens checkout (default: ``third_party/ThunderKittens`` next to
    the attn package's repository, or under the current directory).
ATTN_CACHE_DIR : where builds are cached (default ``~/.cache/attn``).
ATTN_TK_NVCC_FLAGS : extra nvcc flags, whitespace-separated, part of the cache key (developer
    builds: ``-DATTN_TK_TRACE`` for ``bench/tk_trace.py``, ``-DATTN_TK_PIPELINE=0``).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Optional

import torch

#: ThunderKittens commit the kernels are written against.
TK_COMMIT = "0b55588d2769dde0c7a9a606ffc015b0ca7a9551"
TK_URL = "https://github.com/HazyResearch/ThunderKittens"
CSRC = Path(__file__).resolve().parent / "csrc"
REPO_ROOT = Path(__file__).resolve().parents[2]
NVCC_FLAGS = ["-std=c++20", "-DKITTENS_HOPPER", "-gencode", "arch=compute_90a,code=sm_90a",
              "--expt-extended-lambda", "--expt-relaxed-constexpr", "-O3", "-Xptxas", "-v",
              "-DNDEBUG", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]

_module = None
_failure: Optional[str] = None  # build log path of a failed build in this process


class TKBuildError(RuntimeError):
    """The extension failed to build; the message names the build log."""


def nvcc_flags() -> list[str]:
    """The nvcc flags of this build: :data:`NVCC_FLAGS` plus ``ATTN_TK_NVCC_FLAGS``."""
    return list(NVCC_FLAGS) + os.environ.get("ATTN_TK_NVCC_FLAGS", "").split()


def csrc_dir() -> Path:
    """The kernel sources: :data:`CSRC`, or ``ATTN_TK_CSRC`` (for A/B runs of two versions of
    the kernels in one process tree, ``bench/tk_variants.sh``; each gets its own cache entry)."""
    env = os.environ.get("ATTN_TK_CSRC")
    return Path(env).resolve() if env else CSRC


def sources() -> list[Path]:
    """The files compiled into the extension (the .cu / .cpp units)."""
    return sorted(p for p in csrc_dir().iterdir() if p.suffix in (".cu", ".cpp"))


def _hashed_files() -> list[Path]:
    return sorted(p for p in csrc_dir().iterdir() if p.suffix in (".cu", ".cpp", ".cuh", ".h"))


def tk_root() -> Optional[Path]:
    """The ThunderKittens checkout, or None when none is found.

    ``THUNDERKITTENS_ROOT`` when set (even if wrong: then None, so the user learns the
    variable points nowhere); otherwise ``third_party/ThunderKittens`` under the repository
    holding this package, then under the current directory.
    """
    env = os.environ.get("THUNDERKITTENS_ROOT")
    cands = [Path(env)] if env else [REPO_ROOT / "third_party" / "ThunderKittens",
                                     Path.cwd() / "third_party" / "ThunderKittens"]
    for c in cands:
        if (c / "include" / "kittens.cuh").is_file():
            return c.resolve()
    return None


def nvcc_path() -> Optional[str]:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def gpu_arch() -> str:
    """``sm_XY`` of the current GPU, or ``none``."""
    if not torch.cuda.is_available():
        return "none"
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


def _tk_fingerprint(root: Optional[Path]) -> str:
    # Sizes and mtimes of the headers: cheap, and changes when the checkout changes.
    if root is None:
        return "no-tk"
    h = hashlib.sha256(str(root).encode())
    for p in sorted((root / "include").rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_key(arch: Optional[str] = None, root: Optional[Path] = None) -> str:
    """Hash of the sources, the ThunderKittens headers, torch and CUDA versions and the GPU arch."""
    h = hashlib.sha256()
    for p in _hashed_files():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(_tk_fingerprint(root if root is not None else tk_root()).encode())
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda};arch={arch or gpu_arch()}".encode())
    h.update(" ".join(nvcc_flags()).encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("ATTN_CACHE_DIR") or Path.home() / ".cache" / "attn")


def build_dir(key: Optional[str] = None) -> Path:
    return cache_root() / f"tk-{key or cache_key()}"


def _failed_marker(d: Path) -> Path:
    return d / "FAILED"


def environment_reasons() -> list[str]:
    """Why the extension cannot be built or run here, without building anything."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA device (torch.cuda.is_available() is False); the tk backend needs an H100-class GPU")
    else:
        cap = torch.cuda.get_device_capability()
        if cap != (9, 0):
            reasons.append(f"compute capability {cap[0]}.{cap[1]} is not 9.0: the tk kernels use Hopper "
                           "wgmma/TMA (sm_90a) and run only on H100/H200-class GPUs")
    if tk_root() is None:
        env = os.environ.get("THUNDERKITTENS_ROOT")
        where = (f"THUNDERKITTENS_ROOT={env} has no include/kittens.cuh" if env else
                 f"THUNDERKITTENS_ROOT is not set and {REPO_ROOT / 'third_party' / 'ThunderKittens'} "
                 "(or ./third_party/ThunderKittens) does not exist")
        reasons.append(f"ThunderKittens headers not found: {where}. Get them with: git clone {TK_URL} "
                       f"third_party/ThunderKittens && git -C third_party/ThunderKittens checkout {TK_COMMIT} "
                       "(or set THUNDERKITTENS_ROOT to a checkout of that commit)")
    if nvcc_path() is None:
        reasons.append("nvcc not found (set CUDA_HOME or put the CUDA toolkit's bin/ on PATH; CUDA >= 12.3 needed)")
    return reasons


def unavailable_reasons() -> list[str]:
    """:func:`environment_reasons`, plus a failed build of these sources if one was attempted."""
    reasons = environment_reasons()
    if reasons:
        return reasons
    if _failure is not None:
        return [f"the ThunderKittens extension failed to build; see the log {_failure}"]
    marker = _failed_marker(build_dir())
    if marker.is_file():
        log = marker.read_text().strip()
        reasons.append(f"the ThunderKittens extension failed to build; see the log {log} "
                       f"(delete {marker} to retry, or run `python -m attn build`)")
    return reasons


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process builds
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_args(root: Path, d: Path, key: str, verbose: bool = False) -> dict:
    """Keyword arguments of ``torch.utils.cpp_extension.load`` for this build."""
    return dict(
        name=f"attn_tk_{key}",
        sources=[str(p) for p in sources()],
        extra_include_paths=[str(root / "include"), str(root / "prototype"), str(csrc_dir())],
        extra_cflags=["-O3", "-std=c++20"],
        extra_cuda_cflags=nvcc_flags(),
        extra_ldflags=["-lcuda"],
        build_directory=str(d),
        verbose=verbose,
        with_cuda=True,
    )


def load(verbose: bool = False, force: bool = False):
    """The compiled extension module, building it on first use.

    Raises
    ------
    TKBuildError
        When the environment cannot build it (the reasons say why) or the build failed
        (the message names the log).
    """
    global _module, _failure
    if _module is not None:
        return _module
    reasons = environment_reasons()
    if reasons:
        raise TKBuildError("cannot build the ThunderKittens extension: " + "; ".join(reasons))
    root = tk_root()
    key = cache_key(root=root)
    d = build_dir(key)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "build.log"
    marker = _failed_marker(d)
    if marker.is_file() and not force:
        _failure = marker.read_text().strip()
        raise TKBuildError(f"the ThunderKittens extension failed to build earlier; see the log {_failure} "
                           f"(delete {marker} or run `python -m attn build` to retry)")
    from torch.utils import cpp_extension

    with _file_lock(d / ".lock"):
        old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        # torch would add plain sm_90 code; wgmma and setmaxnreg need the arch-specific sm_90a.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0a"
        try:
            mod = cpp_extension.load(**build_args(root, d, key, verbose))
        except Exception as e:  # compiler errors arrive as RuntimeError with the output
            log.write_text(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
            marker.write_text(str(log))
            _failure = str(log)
            raise TKBuildError(f"the ThunderKittens extension failed to build; see the log {log}") from e
        finally:
            if old_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
    marker.unlink(missing_ok=True)
    _module = mod
    return mod


def main(argv=None) -> int:
    """``python -m attn build``: build the extension now and print where it lives."""
    parser = argparse.ArgumentParser(prog="python -m attn build",
                                     description="Build the ThunderKittens (tk) extension ahead of time.")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    reasons = environment_reasons()
    if reasons:
        print("cannot build the tk extension:", file=sys.stderr)
        for r in reasons:
            print(f"  - {r}", file=sys.stderr)
        return 1
    try:
        mod = load(verbose=args.verbose, force=True)
    except TKBuildError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"built the tk extension in {build_dir()} ({mod.__file__})")
    return 0
