"""Several real processes on one DiskTier directory: no error, no corrupt value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_disk_worker.py")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_eight_processes_share_one_directory(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), str(seed), "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        for seed in range(8)
    ]
    total_hits = 0
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        hits, wrong, errors = map(int, out.split())
        assert wrong == 0
        assert errors == 0
        total_hits += hits
    # 8 x 300 lookups over 60 prompts: nearly all of them hit what some process wrote.
    assert total_hits > 8 * 300 - 8 * 60
