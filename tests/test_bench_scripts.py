"""The GPU-call scripts' variant words (bench/variant_words.sh), checked on the CPU.

A variant word that reaches the wrong place (a plan switch passed to nvcc, a flag lost on the
way to the build or the runs) would time the wrong kernels without any error, so the words'
parsing and the scripts' wiring run here with stand-ins for ``python3`` and ``nvidia-smi``
that record what they were called with.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import attn

ROOT = Path(__file__).resolve().parents[1]
WORDS = ROOT / "bench" / "variant_words.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def bash(script: str, env: dict | None = None) -> str:
    out = subprocess.run(["bash", "-c", f"source {WORDS}; {script}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=True)
    return out.stdout


def test_words_go_to_flags_sources_and_environment():
    v = "default -DATTN_TK_QSLOTS=4 csrc=/tmp/other ATTN_TK_FILL=1 -DATTN_TK_SELF_Q=0 ATTN_TK_ORDER=lpt"
    assert bash(f'variant_flags "{v}"').strip() == "-DATTN_TK_QSLOTS=4 -DATTN_TK_SELF_Q=0"
    assert bash(f'variant_csrc "{v}"').strip() == "/tmp/other"
    assert bash(f'variant_envs "{v}"').split() == ["ATTN_TK_FILL=1", "ATTN_TK_ORDER=lpt"]
    assert bash('variant_flags default').strip() == "" and bash('variant_csrc default').strip() == ""
    assert bash('variant_flags ""').strip() == ""
    extra = {"VARIANT_EXTRA_FLAGS": "-DATTN_TK_TIMELINE"}
    assert bash('variant_flags "-DX=1"', extra).strip() == "-DX=1 -DATTN_TK_TIMELINE"
    assert bash('variant_flags default', extra).strip() == "-DATTN_TK_TIMELINE"


def test_run_variant_sets_them_and_explicit_words_win():
    show = 'sh -c \'echo "[$ATTN_TK_NVCC_FLAGS][$ATTN_TK_CSRC][${ATTN_TK_FILL:-}]"\''
    assert bash(f'run_variant "-DA=1 csrc=/x ATTN_TK_FILL=1" {show}').strip() == "[-DA=1][/x][1]"
    assert bash(f'run_variant default {show}').strip() == "[][][]"
    assert bash(f'run_variant "ATTN_TK_CSRC=/y" {show}').strip() == "[][/y][]"


@pytest.fixture
def stand_ins(tmp_path):
    """A PATH whose ``python3`` records its environment and arguments (one line per call in
    ``calls.txt``), fails when ATTN_TK_NVCC_FLAGS holds -DFAIL and times out running tests when
    it holds -DHANG; and an ``nvidia-smi``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        f'echo "flags=[$ATTN_TK_NVCC_FLAGS] csrc=[$ATTN_TK_CSRC] fill=[${{ATTN_TK_FILL:-}}] args=[$*]" >> {calls}\n'
        'case "$ATTN_TK_NVCC_FLAGS" in *-DFAIL*) exit 3;; esac\n'
        # -DHANG: its tests run past their timeout (timeout's status)
        'case "$ATTN_TK_NVCC_FLAGS $*" in *-DHANG*tests/*) exit 124;; esac\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'name, clocks'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "calls": calls, "out": tmp_path / "out"}


def test_build_variants_builds_each_with_its_words(stand_ins, tmp_path):
    out, log = tmp_path, tmp_path / "log.txt"
    stdout = bash(f'build_variants {out} {log} default "-DA=1 ATTN_TK_FILL=1" "-DFAIL"', {"PATH": stand_ins["PATH"]})
    calls = sorted(stand_ins["calls"].read_text().splitlines())
    assert calls == ["flags=[-DA=1] csrc=[] fill=[1] args=[-m attn build]",
                     "flags=[-DFAIL] csrc=[] fill=[] args=[-m attn build]",
                     "flags=[] csrc=[] fill=[] args=[-m attn build]"]
    assert stdout.splitlines()[1:] == ["build v0 rc=0", "build v1 rc=0", "build v2 rc=3"]
    assert "builds: " in log.read_text() and not list(out.glob("build-v*.txt"))


def test_timeline_script_builds_and_runs_each_variant_as_a_timeline_build(stand_ins):
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "CASES": "tree-3level"}
    subprocess.run(["bash", "bench/tk_timeline_variants.sh", "default", "-DA=1 ATTN_TK_FILL=1"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    calls = stand_ins["calls"].read_text().splitlines()
    builds = sorted(c for c in calls if "attn build" in c)
    runs = [c for c in calls if "tk_timeline.py" in c]
    assert builds == ["flags=[-DA=1 -DATTN_TK_TIMELINE] csrc=[] fill=[1] args=[-m attn build]",
                      "flags=[-DATTN_TK_TIMELINE] csrc=[] fill=[] args=[-m attn build]"]
    assert runs == ["flags=[-DATTN_TK_TIMELINE] csrc=[] fill=[] args=[bench/tk_timeline.py tree-3level --show 0]",
                    "flags=[-DA=1 -DATTN_TK_TIMELINE] csrc=[] fill=[1] args=[bench/tk_timeline.py tree-3level --show 0]"]


def test_coresident_script_runs_its_builds_with_their_flags(stand_ins):
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"])}
    subprocess.run(["bash", "bench/tk_coresident.sh", "gqa-8b"], cwd=ROOT, env=env, check=True, capture_output=True)
    runs = [c for c in stand_ins["calls"].read_text().splitlines() if "tk_coresident.py" in c]
    assert len(runs) == 3 and runs[0].startswith("flags=[] ")
    assert all("-DATTN_TK_MAXNREG=128" in r and "--workloads gqa-8b" in r for r in runs[1:])
    assert "-DATTN_TK_SMEM_KB=128" in runs[1] and "-DATTN_TK_SMEM_KB=96" in runs[2]


def test_variants_script_tests_and_times_each_variant_with_its_words(stand_ins):
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "NCU_CASES": ""}
    subprocess.run(["bash", "bench/tk_variants.sh", "t", "ATTN_TK_FILL=1", "-DA=1 csrc=/x"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    calls = stand_ins["calls"].read_text().splitlines()
    tests = [c for c in calls if "tests/test_tk_gpu.py" in c]
    benches = [c for c in calls if "pytest bench/" in c]
    assert tests == [tests[0]] and tests[0].startswith("flags=[] csrc=[] fill=[1] ")
    assert [b.split(" args=")[0] for b in benches] == ["flags=[] csrc=[] fill=[1]", "flags=[-DA=1] csrc=[/x] fill=[]"]
    assert "--benchmark-save=t-v0" in benches[0] and "--benchmark-save=t-v1" in benches[1]


def test_variants_script_runs_the_named_tests_on_the_named_variants_and_may_time_nothing(stand_ins):
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "NCU_CASES": "",
           "TESTS": "tests/test_agreement.py -k past_lengths", "TEST_VARIANTS": "0 2", "SKIP_BENCH": "1"}
    subprocess.run(["bash", "bench/tk_variants.sh", "t", "default", "-DA=1", "-DB=1 ATTN_TK_FILL=1"], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    calls = stand_ins["calls"].read_text().splitlines()
    tests = [c for c in calls if "pytest tests/" in c]
    assert [t.split(" args=")[0] for t in tests] == ["flags=[] csrc=[] fill=[]", "flags=[-DB=1] csrc=[] fill=[1]"]
    assert all("tests/test_agreement.py -k past_lengths -q" in t for t in tests)
    assert not [c for c in calls if "pytest bench/" in c]


def test_variants_script_measures_eager_host_time_of_each_variant(stand_ins):
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "NCU_CASES": "",
           "SKIP_TESTS": "1", "SKIP_BENCH": "1", "EAGER": "--backend tk --op chunk gqa-8b"}
    subprocess.run(["bash", "bench/tk_variants.sh", "t", "default", "-DA=1 ATTN_TK_FILL=1"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    calls = stand_ins["calls"].read_text().splitlines()
    eager = [c for c in calls if "bench/eager_time.py" in c]
    assert [e.split(" args=")[0] for e in eager] == ["flags=[] csrc=[] fill=[]", "flags=[-DA=1] csrc=[] fill=[1]"]
    assert all(e.endswith("args=[bench/eager_time.py --backend tk --op chunk gqa-8b]") for e in eager)
    assert not [c for c in calls if "pytest" in c]


def test_variants_script_profiles_its_first_variant_through_the_ncu_script(stand_ins):
    """NCU_CASES goes to bench/tk_ncu_source.sh under the first variant's words, without the
    pipe-metrics pass; its stall summary and source page land in OUT."""
    ncu = Path(stand_ins["PATH"].split(os.pathsep)[0]) / "ncu"
    ncu.write_text("#!/bin/sh\n"
                   f'echo "ncu flags=[$ATTN_TK_NVCC_FLAGS] fill=[${{ATTN_TK_FILL:-}}] args=[$*]" >> {stand_ins["calls"]}\n')
    ncu.chmod(0o755)
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "SKIP_TESTS": "1",
           "NCU_CASES": "gqa-8b:shared_prefix"}
    subprocess.run(["bash", "bench/tk_variants.sh", "t", "-DA=1 ATTN_TK_FILL=1", "default"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    calls = stand_ins["calls"].read_text().splitlines()
    profiles = [c for c in calls if c.startswith("ncu ") and "tk_ncu.py" in c]
    assert len(profiles) == 1 and profiles[0].startswith("ncu flags=[-DA=1] fill=[1] ")
    assert "bench/tk_ncu.py gqa-8b shared_prefix" in profiles[0] and "--section SourceCounters" in profiles[0]
    assert not any("--metrics" in c for c in calls)
    assert any("bench/ncu_stalls.py /tmp/src-gqa-8b-shared_prefix.csv" in c for c in calls)
    assert (stand_ins["out"] / "src-gqa-8b-shared_prefix.csv.gz").exists()


def test_variants_script_skips_the_benchmark_of_a_variant_whose_tests_timed_out(stand_ins):
    """A hang in the first variant's tests would hang its benchmark too: the script says so
    and times the other variants."""
    env = {**os.environ, "PATH": stand_ins["PATH"], "OUT": str(stand_ins["out"]), "NCU_CASES": ""}
    done = subprocess.run(["bash", "bench/tk_variants.sh", "t", "-DHANG", "default"], cwd=ROOT, env=env,
                          check=True, capture_output=True, text=True)
    calls = stand_ins["calls"].read_text().splitlines()
    benches = [c for c in calls if "pytest bench/" in c]
    assert len(benches) == 1 and benches[0].startswith("flags=[] ") and "--benchmark-save=t-v1" in benches[0]
    assert "## bench v0 skipped: its tests timed out (rc 124; a hang?)" in done.stdout


def test_eager_time_needs_a_gpu_and_times_the_public_op(monkeypatch, capsys):
    import torch
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import eager_time
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eager_time.main(["gqa-8b"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    from attn.cases import build_inputs, small_workloads
    inputs = build_inputs(small_workloads()[0], torch.float32, "cpu")
    for op in ("shared_prefix", "chunk"):
        got = eager_time.public_call(inputs, op, "torch")()
        want = attn.shared_prefix_attention(*inputs.level.args(), backend="torch")
        torch.testing.assert_close(got, want)
    ragged = build_inputs(next(w for w in small_workloads() if w.ragged), torch.float32, "cpu")
    torch.testing.assert_close(eager_time.public_call(ragged, "shared_prefix", "torch", host_lens=True)(),
                               attn.shared_prefix_attention(*ragged.level.args(), backend="torch"))
    calls, syncs = [], []
    issue, wall = eager_time.host_us(lambda: calls.append(1), 4, 3, sync=lambda: syncs.append(1))
    assert len(calls) == 12 and len(syncs) == 6 and 0 < issue <= wall
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    text = eager_time.profile(lambda: calls.append(2), 5, 3)
    assert calls.count(2) == 5 and "per call of the op" in text and "<lambda>" in text


def test_eager_ab_builds_and_times_each_tree_with_its_own_package(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("python3", "taskset"):
        (bin_dir / tool).write_text("#!/bin/sh\n" + (
            f'echo "cwd=[$PWD] path=[$PYTHONPATH] args=[$*]" >> {calls}\n' if tool == "python3"
            else 'shift 2; exec "$@"\n'))  # taskset -c CORE cmd...: run cmd
        (bin_dir / tool).chmod(0o755)
    old = tmp_path / "old"
    (old / "attn" / "tk_ext" / "csrc").mkdir(parents=True)
    (old / "attn" / "tk_ext" / "csrc" / "x.cu").write_text("old")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"), "ROUNDS": "1"}
    subprocess.run(["bash", "bench/eager_ab.sh", str(old), "--backend", "tk"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    lines = calls.read_text().splitlines()
    builds = sorted(c for c in lines if "-m attn build" in c)
    assert builds == sorted([f"cwd=[{ROOT}] path=[{os.environ.get('PYTHONPATH', '')}] args=[-m attn build]",
                             f"cwd=[{old}] path=[{os.environ.get('PYTHONPATH', '')}] args=[-m attn build]"])
    runs = [c for c in lines if "eager_time.py" in c]
    assert runs == [f"cwd=[{ROOT}] path=[{old}] args=[bench/eager_time.py --backend tk]",
                    f"cwd=[{ROOT}] path=[.] args=[bench/eager_time.py --backend tk]"]
