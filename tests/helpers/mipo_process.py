"""Run the real ``mipo`` command line in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_mipo(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``mipo <args>`` from the checkout's ``cli.py``, output captured as text."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout,
        env=os.environ.copy() if env is None else env,
    )
