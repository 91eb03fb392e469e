"""Shared fixtures: a tiny random model built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep test runs quiet and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray instance a test starts (in this process or in the processes it launches) binds the
# loopback address: Ray's single-machine mode, which it otherwise keeps for macOS and Windows
# (on Linux it binds the machine's network address). Read when Ray is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# gcsfs probes each bucket's type over gRPC with TLS, which a local Cloud Storage emulator does
# not speak (a minute's timeout per probe); the plain JSON API is what the tests exercise.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

# The benchmark files beside the checkout are a test fixture: make them the default benchmark
# data (the product default is the pinned Hub copy, unreachable in tests).
_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("MIPO_SHARED_DATA", str(_SHARED_DATA))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama-style model with a 384-token BPE tokenizer (seconds to build)."""
    from mipo_engine.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")
