"""Secrets and safety: planted API keys never reach a file, a log or an error message, and
user text is never evaluated as a template. (That ``mipo publish`` refuses to upload rows that
look like they hold a secret unless ``--force`` is given is tested in
``tests/test_publish.py::test_rows_that_look_like_secrets_are_refused_unless_forced``.)

The pipeline test plants ``OPENAI_API_KEY=sk-planted-...`` and ``HF_TOKEN=hf_planted...`` in
the environment and runs ``mipo run`` through ingest, generate, score, judge, export, train,
eval and publish --dry-run on the tiny model, then ``mipo report`` and a real (failing)
``mipo publish``. The judge and the eval's judge use the openai backend against a local fake
server that insists on the planted key (so the key is really used) and, for some requests,
answers an error that repeats the key back (as careless servers do). Every file written and
all captured output are then searched for the tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from tests.helpers.mipo_process import run_mipo
from tests.reliability.fault_proxy import FAKE_MODEL, FakeOpenAIServer

# Random cores, so a leak cannot be a coincidence and the test cannot pass by a lucky string.
OPENAI_KEY = f"sk-planted-{secrets.token_hex(12)}"
HF_TOKEN = f"hf_planted{secrets.token_hex(12)}"
PLANTED = (OPENAI_KEY, HF_TOKEN)


def _echoes_key(body: dict[str, Any]) -> bool:
    """One request in three gets an error message that repeats its Authorization header."""
    digest = hashlib.sha256(json.dumps(body.get("messages")).encode()).digest()
    return digest[0] % 3 == 0


def leaks(text: str | bytes) -> list[str]:
    """Which planted secrets (or their random cores) appear in ``text``."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    found = []
    for token in PLANTED:
        core = token[-24:]  # the random hex part
        if token.encode() in data or core.encode() in data:
            found.append(token[:12] + "...")
    return found


def readable_content(path: Path) -> bytes:
    """A file's bytes; for Parquet (compressed), its rows as JSON lines as well."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        data += pl.read_parquet(path).write_ndjson().encode()
    return data


def scan_files(root: Path) -> dict[str, list[str]]:
    """Every file under ``root`` that holds a planted secret, with what it holds."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            hits = leaks(readable_content(path))
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def test_the_scan_finds_planted_keys_in_compressed_parquet_and_text(tmp_path: Path) -> None:
    """The scanner itself: a key inside a zstd-compressed Parquet cell, or only its random
    core in a log line, is found; a file without either is not."""
    pl.DataFrame({"text": [f"x {OPENAI_KEY} y" * 50]}).write_parquet(
        tmp_path / "a.parquet", compression="zstd"
    )
    (tmp_path / "log.txt").write_text(f"token=...{HF_TOKEN[-24:]}\n")
    (tmp_path / "clean.txt").write_text("sk-planted- but no key\n")
    expected = {"a.parquet": [OPENAI_KEY[:12] + "..."], "log.txt": [HF_TOKEN[:12] + "..."]}
    assert scan_files(tmp_path) == expected


@pytest.fixture(scope="module")
def judge_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=OPENAI_KEY, echo_key_when=_echoes_key) as server:
        yield server


def _pipeline(run_dir: Path, model: Path, judge_url: str) -> dict[str, Any]:
    judge = {"backend": "openai", "model": FAKE_MODEL, "base_url": judge_url}
    return {
        "run_dir": str(run_dir),
        "defaults": {"model": str(model), "seed": 0},
        "stages": [
            {"stage": "ingest", "inputs": ["builtin:personalization-train"], "limit": 6},
            {"stage": "generate", "max_new_tokens": 6, "batch_size": 6},
            {"stage": "score", "max_length": 128},
            {"stage": "judge", "mode": "rlaif", "max_new_tokens": 8, "max_attempts": 1, **judge},
            {"stage": "export"},
            {"stage": "train", "loss": "dpo", "max_steps": 2, "save_steps": 1,
             "logging_steps": 1, "per_device_batch_size": 2, "max_length": 128},
            {"stage": "eval", "name": "eval_trained", "policy": "train",
             "task": "personalization", "limit": 2, "max_new_tokens": 6,
             "judge_mode": "rlaif", "judge_backend": "openai", "judge_model": FAKE_MODEL,
             "judge_base_url": judge_url},
            {"stage": "publish", "repo_id": "test-org/planted-secrets", "dry_run": True},
        ],
    }  # fmt: skip


def test_planted_keys_reach_no_file_log_card_report_or_error(
    judge_server: FakeOpenAIServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "HF_TOKEN": HF_TOKEN,
        "HUGGING_FACE_HUB_TOKEN": HF_TOKEN,
        # A real upload is attempted below: point the Hub at a closed port on this machine.
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
    }
    run_dir = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(_pipeline(run_dir, tiny_model_dir, judge_server.url)))
    outputs = []
    pipeline = run_mipo(["run", str(config)], env=env)
    outputs.append(pipeline)
    assert pipeline.returncode == 0, pipeline.stderr[-4000:]
    report = run_mipo(["report", str(run_dir), "--out", str(tmp_path / "report")], env=env)
    outputs.append(report)
    assert report.returncode == 0, report.stderr[-4000:]
    upload = run_mipo(
        ["publish", "--preferences", str(run_dir / "preferences.parquet"),
         "--repo-id", "test-org/planted-secrets"],
        env=env,
    )  # fmt: skip
    outputs.append(upload)
    assert upload.returncode != 0, "the upload cannot succeed: the Hub is a closed local port"

    # The key was really used, and the server really tried to leak it.
    assert judge_server.authorized > 0 and judge_server.echoed > 0
    assert judge_server.requests == judge_server.authorized
    judgments = pl.read_parquet(run_dir / "judgments.parquet")
    assert judgments["error"].drop_nulls().len() > 0  # the echoed errors were recorded...
    assert (tmp_path / "report" / "index.html").is_file()
    assert list((run_dir).rglob("README.md")), "publish --dry-run wrote no dataset card"

    # ... but nowhere holds the secrets.
    assert scan_files(tmp_path) == {}
    for result in outputs:
        assert leaks(result.stdout) == [] and leaks(result.stderr) == [], result.args
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(
        f"\n[secrets] {len(files)} files ({size / 1e6:.1f} MB) and {len(outputs)} commands' "
        f"output scanned: 0 leaks; {judge_server.echoed} server errors echoed the key"
    )


# ---------------------------------------------------------------------------------------------
# User text is data, never template code
# ---------------------------------------------------------------------------------------------

TEMPLATE_PROMPT = "Compute {{ 7*7 }} and {% for i in range(3) %}{{ i }}{% endfor %} ${response}"
TEMPLATE_CONTEXT = "I like {{ config }} and {# comments #} and ${prompt} placeholders."


def test_template_syntax_in_prompts_reaches_generations_verbatim(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Jinja (the chat template) and ``${name}`` (the project's templates) syntax in a user's
    prompt and context arrives unevaluated in the rendered conditioning texts."""
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        json.dumps({"id": "t1", "prompt": TEMPLATE_PROMPT, "context": TEMPLATE_CONTEXT}) + "\n"
    )
    runner = CliRunner()
    prompts, generations = tmp_path / "p.parquet", tmp_path / "g.parquet"
    result = runner.invoke(app, ["ingest", str(source), "--out", str(prompts)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["generate", "--prompts", str(prompts), "--out", str(generations),
         "--model", str(tiny_model_dir), "--max-new-tokens", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = pl.read_parquet(generations).row(0, named=True)
    assert TEMPLATE_PROMPT in row["chosen_input"] and TEMPLATE_CONTEXT in row["chosen_input"]
    assert TEMPLATE_PROMPT in row["rejected_input"]
    assert "49" not in row["chosen_input"] and "012" not in row["chosen_input"]


def test_template_syntax_in_responses_reaches_the_judge_verbatim() -> None:
    """The judge prompt is filled in one pass: a response holding ``${prompt}`` or Jinja is
    shown as written, and the prompt's own text is not substituted into it."""
    from mipo_engine.judging.judge import rlaif_judge_messages
    from mipo_engine.judging.targets import JudgedResponse, Judgment

    response = "Sure: ${prompt} {{ 7*7 }} {% raw %}"
    target = JudgedResponse("r1", "response", TEMPLATE_PROMPT, response, TEMPLATE_CONTEXT,
                            (TEMPLATE_CONTEXT,), None)  # fmt: skip
    content = rlaif_judge_messages(Judgment("j1", target, 0, TEMPLATE_CONTEXT, None, None))[0][
        "content"
    ]
    assert response in content and TEMPLATE_PROMPT in content and TEMPLATE_CONTEXT in content
    assert content.count(TEMPLATE_PROMPT) == 1  # "${prompt}" in the response stayed literal
