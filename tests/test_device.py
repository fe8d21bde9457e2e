"""stripes.device: the CPU allocator setting (glibc keeps freed memory)."""

import subprocess
import sys
import textwrap

import pytest

from stripes import device as devmod

_PROBE = textwrap.dedent("""
    import os, resource, sys, torch
    from stripes.device import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "on" else False
    x = torch.empty(0)
    for i in range(30):  # 64 MiB tensors: above glibc's largest mmap threshold
        if i == 20:  # the heap grows for the first few (aligned allocations fragment it), then holds
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 * 2**20)
        del x
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_page_faults_on_reused_buffers():
    kept, faults_on = _faults("on")
    _, faults_off = _faults("off")
    assert kept == "True"
    # off: each of the last ten 64 MiB tensors is a fresh mmap, 16384 page faults each; on: none
    assert faults_off > 10 * 16384 * 0.9, faults_off
    assert faults_on < 1000, faults_on


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(devmod, "_heap_kept", False)
    monkeypatch.setenv("STRIPES_KEEP_FREED_MEMORY", "0")
    assert devmod.keep_freed_memory() is False
