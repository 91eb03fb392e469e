"""The built wheel works without the source tree.

The wheel is built from this checkout, installed into a fresh virtual environment that reuses
the installed dependencies (``--system-site-packages``) but not the checkout, and used from a
folder outside the source tree: ``mipo --help``, ingesting a built-in set, rendering a prompt
template and the report page's template. Every module and resource must come from the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(dist: Path, env: dict[str, str]) -> Path:
    """Build the wheel from this checkout with the installed build backend (no download)."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(dist),
            str(REPO_ROOT),
        ],
        cwd=dist.parent,
        env=env,
    )
    (wheel,) = dist.glob("mipo_engine-*.whl")
    return wheel


def _clean_env() -> dict[str, str]:
    """This environment without the checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(the venv's bin folder, an environment without the checkout, a folder to work in)."""
    root = tmp_path_factory.mktemp("wheel")
    env = _clean_env()
    wheel = _build_wheel(root / "dist", env)
    venv = root / "venv"
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        cwd=root,
        env=env,
    )
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # pip itself comes from the system site-packages; it installs into the venv it runs in.
    _run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", str(wheel)],
        cwd=root,
        env=env,
    )
    work = root / "work"
    work.mkdir()
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(venv)
    return bin_dir, env, work


def test_the_wheel_carries_the_package_data(tmp_path):
    """Prompts, rubrics, built-in data and the report template are inside the wheel."""
    (tmp_path / "dist").mkdir()
    with zipfile.ZipFile(_build_wheel(tmp_path / "dist", _clean_env())) as wheel:
        names = set(wheel.namelist())
    for resource in ("prompts", "rubrics", "data"):
        tracked = subprocess.run(
            ["git", "ls-files", resource], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.split()
        assert tracked, resource
        for path in tracked:
            assert f"mipo_engine/_resources/{path}" in names, path
    assert "cli.py" in names
    assert "mipo_engine/report/templates/report.html.j2" in names


@pytest.mark.slow  # builds a wheel and a virtual environment: 10-35 s on 2 busy cores
def test_the_installed_wheel_runs_without_the_source_tree(installed):
    bin_dir, env, work = installed
    python = str(bin_dir / "python")

    # The package, the CLI module and the resources all resolve inside the venv.
    probe = _run(
        [
            python,
            "-c",
            "import json, sys, cli, mipo_engine\n"
            "from mipo_engine.resources import resource_dir\n"
            "print(json.dumps({'package': mipo_engine.__file__, 'cli': cli.__file__,"
            " 'data': str(resource_dir('data')), 'prefix': sys.prefix}))",
        ],
        cwd=work,
        env=env,
    )
    where = json.loads(probe.stdout.strip().splitlines()[-1])
    venv = Path(where["prefix"]).resolve()
    for key in ("package", "cli", "data"):
        path = Path(where[key]).resolve()
        assert venv in path.parents, (key, path)
        assert REPO_ROOT not in path.parents, (key, path)

    # mipo --help through the console script the wheel installed.
    help_text = _run([str(bin_dir / "mipo"), "--help"], cwd=work, env=env).stdout
    for command in ("ingest", "generate", "train", "report"):
        assert command in help_text

    # Ingest a built-in set.
    _run(
        [str(bin_dir / "mipo"), "ingest", "builtin:general", "--limit", "5", "--out", "p.parquet"],
        cwd=work,
        env=env,
    )
    prompts = pl.read_parquet(work / "p.parquet")
    assert prompts.height == 5 and prompts["source"].str.starts_with("builtin").all()
    manifest = json.loads((work / "p.manifest.json").read_text())
    assert manifest["stage"] == "ingest"

    # Render a prompt template and the report page's template from the installed package.
    rendered = _run(
        [
            python,
            "-c",
            "from mipo_engine.templates import render\n"
            "print(render('user_turn_with_context.txt', prompt='Name a colour.',"
            " context='Answer in one word.'))",
        ],
        cwd=work,
        env=env,
    ).stdout
    assert "Name a colour." in rendered and "Answer in one word." in rendered
    page = _run(
        [
            python,
            "-c",
            "from pathlib import Path\n"
            "from mipo_engine.report.data import RunData\n"
            "from mipo_engine.report.html import render_report\n"
            "print(render_report([(RunData(root=Path('.'), label='<wheel>'), {})],"
            " generated_at='now'))",
        ],
        cwd=work,
        env=env,
    ).stdout
    assert "<title>mipo report: &lt;wheel&gt;</title>" in page
