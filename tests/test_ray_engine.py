"""``--engine ray``: the model-calling stages on a local Ray instance (127.0.0.1, 2 CPUs).

Rows must equal those of ``--engine local`` (same seed, same order); a Ray worker killed
mid-run is restarted and its chunk retried; a driver killed mid-run resumes, computing only
the chunks its journal does not hold; bad engine settings exit 2 before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil
import pytest
import ray  # the [ray] extra; the README's install line includes it
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.schemas import (
    EVAL,
    GENERATIONS,
    JUDGMENTS,
    PROMPTS,
    RESPONSES,
    RUBRICS,
    SCORES,
)
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest
from mipo_engine.stages.eval import EvalConfig, run_eval
from mipo_engine.stages.generate import GenerateConfig, run_generate
from mipo_engine.stages.judge import JudgeConfig, run_judge
from mipo_engine.stages.revise import ReviseConfig, run_revise
from mipo_engine.stages.rubrics import RubricsConfig, run_rubrics
from mipo_engine.stages.score import ScoreConfig, run_score

# A loaded 2-core machine can take more than Ray's default minute to register its node.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
# conftest.py makes every Ray instance of the tests bind 127.0.0.1 (checked in local_ray).

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance for this module's in-process runs (starting one takes seconds)."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    result = runner.invoke(app, ["ingest", "builtin:personalization-train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _generate(prompts: Path, out: Path, model: Path, **overrides: object) -> GenerateConfig:
    options: dict[str, object] = {
        "prompts": prompts,
        "out": out,
        "model": str(model),
        "max_new_tokens": 6,
        "limit": 8,
        "batch_size": 4,
        "chunk_pairs": 2,
        "seed": 11,
        "temperature": 1.0,
    }
    options.update(overrides)
    return GenerateConfig.from_options(**options)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def local_generations(prompts_file, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "g.parquet"
    return run_generate(_generate(prompts_file, out, tiny_model_dir))


def test_generate_on_two_ray_workers_writes_the_local_rows(
    local_ray, prompts_file, tiny_model_dir, local_generations, tmp_path
):
    out = run_generate(
        _generate(prompts_file, tmp_path / "g.parquet", tiny_model_dir, engine="ray", workers=2)
    )
    expected = read_artifact(local_generations, GENERATIONS)
    assert expected.height == 8
    assert read_artifact(out, GENERATIONS).equals(expected)
    stats = read_manifest(out)["stats"]
    assert stats["engine"] == {"engine": "ray", "workers": 2, "ray_address": None}
    assert stats["chunks_this_run"] == 4
    # The engine does not change what the output is: same fingerprint as the local run.
    assert read_manifest(out)["fingerprint"] == read_manifest(local_generations)["fingerprint"]


def test_score_on_two_ray_workers_writes_the_local_rows(
    local_ray, tiny_model_dir, local_generations, tmp_path
):
    def config(out: Path, **engine: object) -> ScoreConfig:
        return ScoreConfig.from_options(  # type: ignore[return-value]
            generations=local_generations,
            out=out,
            model=str(tiny_model_dir),
            chunk_rows=3,
            **engine,
        )

    local = read_artifact(run_score(config(tmp_path / "local.parquet")), SCORES)
    remote = read_artifact(
        run_score(config(tmp_path / "ray.parquet", engine="ray", workers=2)), SCORES
    )
    assert local.height == 8
    # Same rows, token counts and order; the log-probs agree to float32 rounding (each Ray
    # worker runs torch on one thread, and a product split over threads sums in another
    # order, which can move the last bit).
    floats = [name for name, dtype in local.schema.items() if dtype.is_float()]
    assert remote.drop(floats).equals(local.drop(floats))
    for name in floats:
        gap = (remote[name] - local[name]).abs().max()
        assert gap is not None and gap <= 1e-4, (name, gap)


def test_revise_on_two_ray_workers_writes_the_local_rows(
    local_ray, tiny_model_dir, local_generations, tmp_path
):
    def config(out: Path, **engine: object) -> ReviseConfig:
        return ReviseConfig.from_options(  # type: ignore[return-value]
            generations=local_generations,
            out=out,
            model=str(tiny_model_dir),
            max_new_tokens=5,
            chunk_rows=3,
            seed=5,
            **engine,
        )

    local = read_artifact(run_revise(config(tmp_path / "local.parquet")), GENERATIONS)
    out = run_revise(config(tmp_path / "ray.parquet", engine="ray", workers=2))
    assert local.height == 8
    assert read_artifact(out, GENERATIONS).equals(local)
    assert read_manifest(out)["stats"]["engine"]["engine"] == "ray"


def _verifiable_responses(path: Path) -> Path:
    items = ["Answer in at most 3 sentences.", 'Do not use the word "basically".']
    texts = ["One. Two.", "Basically this. And that. And more. And more.", "Fine answer."]
    rows = [
        {
            "id": f"r{index}",
            "prompt": "Some request",
            "context": None,
            "context_items": items,
            "response": texts[index % 3],
            "task": None,
        }
        for index in range(9)
    ]
    pl.DataFrame(rows, schema=RESPONSES.polars_schema()).write_parquet(path)
    return path


def test_judge_verify_on_two_ray_workers_writes_the_local_rows(local_ray, tmp_path):
    responses = _verifiable_responses(tmp_path / "responses.parquet")

    def config(out: Path, **engine: object) -> JudgeConfig:
        return JudgeConfig.from_options(  # type: ignore[return-value]
            responses=responses, out=out, mode="verify", chunk_items=4, **engine
        )

    local = read_artifact(run_judge(config(tmp_path / "local.parquet")), JUDGMENTS)
    remote = read_artifact(
        run_judge(config(tmp_path / "ray.parquet", engine="ray", workers=2)), JUDGMENTS
    )
    assert local.height == 18 and set(local["score"].to_list()) == {1.0, 5.0}
    assert remote.equals(local)


def _chunk_workers() -> list[psutil.Process]:
    """This test's Ray actor processes (children of this process's Ray instance)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "_ChunkWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_killed_ray_worker_is_restarted_and_the_run_completes(
    local_ray, prompts_file, tiny_model_dir, tmp_path
):
    options = {"limit": 6, "chunk_pairs": 1, "max_new_tokens": 24}
    expected = read_artifact(
        run_generate(_generate(prompts_file, tmp_path / "l.parquet", tiny_model_dir, **options)),
        GENERATIONS,
    )
    out = tmp_path / "g.parquet"
    config = _generate(prompts_file, out, tiny_model_dir, engine="ray", workers=2, **options)
    killed: list[int] = []
    finished = threading.Event()

    def kill_one_worker() -> None:
        parts = out.with_name(out.name + ".parts")
        while not finished.is_set():
            workers = _chunk_workers()
            if workers and parts.is_dir() and list(parts.glob("part-*.parquet")):
                workers[0].kill()  # SIGKILL, mid-run: at least one chunk is still to come
                killed.append(workers[0].pid)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_worker)
    watcher.start()
    try:
        run_generate(config)
    finally:
        finished.set()
        watcher.join()
    assert len(killed) == 1, "the run ended before a worker could be killed"
    actual = read_artifact(out, GENERATIONS)
    assert actual["id"].is_duplicated().sum() == 0
    assert actual.equals(expected)


def _command(prompts: Path, out: Path, model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli",
        "generate",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        str(model),
        "--max-new-tokens",
        "24",
        "--limit",
        "10",
        "--chunk-pairs",
        "1",
        "--seed",
        "11",
        "--engine",
        "ray",
        "--workers",
        "2",
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_a_killed_driver_resumes_computing_only_unfinished_chunks(
    prompts_file, tiny_model_dir, tmp_path
):
    expected = read_artifact(
        run_generate(
            _generate(
                prompts_file,
                tmp_path / "l.parquet",
                tiny_model_dir,
                limit=10,
                chunk_pairs=1,
                max_new_tokens=24,
            )
        ),
        GENERATIONS,
    )
    out = tmp_path / "g.parquet"
    parts = out.with_name(out.name + ".parts")
    driver = subprocess.Popen(
        _command(prompts_file, out, tiny_model_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=_env(),
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    assert driver.poll() is None, "the run ended before the driver could be killed"
    started = psutil.Process(driver.pid).children(recursive=True)  # its Ray instance
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not is_complete(out)
    saved = len(list(parts.glob("part-*.parquet")))
    assert 3 <= saved < 10
    resumed = subprocess.run(
        _command(prompts_file, out, tiny_model_dir),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_env(),
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming: {saved} of 10 pairs" in resumed.stderr
    actual = read_artifact(out, GENERATIONS)
    assert actual["id"].is_duplicated().sum() == 0
    assert actual.equals(expected)
    assert read_manifest(out)["stats"]["chunks_this_run"] == 10 - saved


def test_bad_engine_settings_exit_2_naming_the_option_and_write_nothing(
    prompts_file, tiny_model_dir, tmp_path
):
    out = tmp_path / "g.parquet"
    base = ["generate", "--prompts", str(prompts_file), "--out", str(out)]
    base += ["--model", str(tiny_model_dir), "--limit", "2"]
    cases = [
        (["--engine", "ray", "--workers", "0"], "workers"),
        (["--engine", "ray", "--ray-address", "127.0.0.1:9"], "ray_address"),
        (["--engine", "ray", "--ray-address", "not-an-address"], "ray_address"),
        (["--engine", "spark"], "engine"),
    ]
    for extra, option in cases:
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert f"'{option}'" in " ".join(result.output.split()), (extra, result.output)
        assert list(tmp_path.iterdir()) == [], extra


def test_eval_on_two_ray_workers_writes_the_local_rows(local_ray, tiny_model_dir, tmp_path):
    """``mipo eval`` (IFEval, 6 prompts, sampled) on two actors: the rows of a local run."""

    def config(out: Path, **engine: object) -> EvalConfig:
        return EvalConfig.from_options(  # type: ignore[return-value]
            task="ifeval",
            out=out,
            model=str(tiny_model_dir),
            limit=6,
            max_new_tokens=4,
            temperature=1.0,
            chunk_items=2,
            **engine,
        )

    local = read_artifact(run_eval(config(tmp_path / "local.parquet")), EVAL)
    out = run_eval(config(tmp_path / "ray.parquet", engine="ray", workers=2))
    assert local.height == 6
    assert read_artifact(out, EVAL).equals(local)
    assert read_manifest(out)["stats"]["engine"]["workers"] == 2


def test_rubrics_on_two_ray_workers_write_the_local_rows(local_ray, tmp_path):
    """``mipo rubrics`` over items that all have checkers (no model call) on two actors."""
    items = [
        "Answer in at most 3 sentences.",
        'Do not use the word "basically".',
        "Use exactly 2 bullet points.",
    ]
    prompts = tmp_path / "prompts.parquet"
    rows = [
        {
            "id": f"p{i}",
            "prompt": "Some request",
            "context": " ".join(items),
            "context_items": items,
            "task": "personalization",
            "source": "test",
        }
        for i in range(2)
    ]
    pl.DataFrame(rows, schema=PROMPTS.polars_schema()).write_parquet(prompts)

    def config(out: Path, **engine: object) -> RubricsConfig:
        return RubricsConfig.from_options(  # type: ignore[return-value]
            contexts=prompts, out=out, chunk_items=1, **engine
        )

    local = read_artifact(run_rubrics(config(tmp_path / "local.parquet")), RUBRICS)
    out = run_rubrics(config(tmp_path / "ray.parquet", engine="ray", workers=2))
    assert local.height == 3 and local["checker"].null_count() == 0
    assert read_artifact(out, RUBRICS).equals(local)
    assert read_manifest(out)["stats"]["engine"] == {
        "engine": "ray",
        "workers": 2,
        "ray_address": None,
    }


class _StatementServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 whose reply depends on the prompt
    only (so any engine gets the same answers): a JSON preference statement naming the
    question's number. It counts the requests it answered."""

    def __init__(self) -> None:
        import json as json_module
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json_module.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked = body["messages"][-1]["content"]
                number = next(word for word in asked.split() if word.isdigit())
                content = json_module.dumps(
                    {"response_length": f"Keep replies under {number} lines.", "tone": "Warm."}
                )
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                payload = json_module.dumps(reply).encode()
                with state.lock:
                    state.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.lock = threading.Lock()
        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_contexts_on_two_ray_workers_write_the_local_rows(local_ray, tmp_path):
    """``mipo contexts`` with the openai backend: each actor is an HTTP client of a local
    server; the contexts and prompts artifacts equal a local run's, one request per row."""
    import json as json_module

    from mipo_engine.artifacts.schemas import CONTEXTS
    from mipo_engine.stages.contexts import ContextsConfig, run_contexts

    preferences = tmp_path / "choices.jsonl"
    rows = [
        {
            "id": f"row-{i}",
            "user_id": f"user-{i % 3}",
            "prompt": f"Question number {i} for row-{i}?",
            "response_a": f"A long answer {i}.",
            "response_b": f"Short {i}.",
            "preferred": "B",
        }
        for i in range(6)
    ]
    preferences.write_text("".join(json_module.dumps(row) + "\n" for row in rows))
    server = _StatementServer()
    try:

        def config(name: str, **engine: object) -> ContextsConfig:
            return ContextsConfig.from_options(  # type: ignore[return-value]
                preferences=preferences,
                out=tmp_path / f"{name}.parquet",
                as_prompts=tmp_path / f"{name}-prompts.parquet",
                backend="openai",
                model="served",
                base_url=server.url,
                chunk_rows=2,
                **engine,
            )

        local = read_artifact(run_contexts(config("local")), CONTEXTS)
        assert server.requests == 6
        out = run_contexts(config("ray", engine="ray", workers=2))
        assert server.requests == 12
    finally:
        server.close()
    assert local.height == 12  # two context items per source row
    assert set(local["source_id"]) == {f"row-{i}" for i in range(6)}
    assert read_artifact(out, CONTEXTS).equals(local)
    assert read_manifest(out)["stats"]["engine"]["workers"] == 2
    assert read_artifact(tmp_path / "ray-prompts.parquet", PROMPTS).equals(
        read_artifact(tmp_path / "local-prompts.parquet", PROMPTS)
    )
