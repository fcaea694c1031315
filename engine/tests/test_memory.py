"""The engine's allocator setting (tuckerize.memory), applied at the CLI's entry point."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tuckerize.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_both_settings_and_large_blocks_still_allocate():
    assert keep_freed_memory() is True
    import torch
    # Without chunk mappings a block far above the old mmap threshold comes from the heap, twice over.
    for _ in range(2):
        block = torch.ones(64, 1 << 20)
        assert float(block.sum()) == 64 * (1 << 20)
        del block


def test_the_entry_point_runs_with_it():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "tuckerize", "--help"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0 and "compress" in result.stdout
