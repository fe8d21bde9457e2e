"""stripes.device: the CPU allocator setting (glibc keeps freed memory) lives in the jobs'
environment, not in the library."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stripes.device import KEEP_FREED_MEMORY_ENV

_PROBE = textwrap.dedent("""
    import resource, torch
    x = torch.empty(0)
    for i in range(30):  # 64 MiB tensors: above glibc's largest mmap threshold
        if i == 20:  # the heap grows for the first few (aligned allocations fragment it), then holds
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 * 2**20)
        del x
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
SRC = Path(__file__).resolve().parents[1] / "src" / "stripes"
RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"


def _faults(extra_env: dict) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**env, **extra_env})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc environment")
def test_keep_freed_memory_env_stops_page_faults_on_reused_buffers():
    faults_on, faults_off = _faults(KEEP_FREED_MEMORY_ENV), _faults({})
    # off: each of the last ten 64 MiB tensors is a fresh mmap, 16384 page faults each; on: none
    assert faults_off > 10 * 16384 * 0.9, faults_off
    assert faults_on < 1000, faults_on


def test_library_leaves_the_allocator_alone_and_the_jobs_set_it():
    assert not [p for p in SRC.rglob("*.py") if ".mallopt" in p.read_text()]  # no libc.mallopt call
    prefix = " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY_ENV.items())
    for rules in ("train.smk", "tune.smk"):
        text = (RULES / rules).read_text()
        assert text.count("OMP_NUM_THREADS={threads}") == text.count(prefix) > 0, rules
