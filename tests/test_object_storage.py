"""Artifacts on object storage: ``s3://`` inputs and outputs on a local S3-compatible server.

The server is moto in server mode on 127.0.0.1, reached through the ordinary s3fs client;
credentials and the endpoint come from the environment only, and the planted secret must
appear in no file or object the run writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import moto.server as moto_server  # dev extra
import pytest
import s3fs  # the [ray] extra; the README's install line includes it
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts import location
from mipo_engine.artifacts.schemas import GENERATIONS, SCORES
from mipo_engine.artifacts.store import is_complete, read_artifact, read_manifest

runner = CliRunner()
SECRET = "planted-secret-Qx7v9Lw2"
KEY_ID = "AKIAPLANTEDKEYID0001"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on 127.0.0.1 and a client to it; the env points s3fs at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    patch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
    client.mkdir("mipo-test")
    yield client
    patch.undo()
    server.stop()


def _written(client, folder: Path) -> dict[str, bytes]:
    """Every object in the test bucket and every file under ``folder``."""
    found = {f"s3://{key}": client.cat_file(key) for key in client.find("mipo-test")}
    found.update({str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    return found


def _generate_here_and_in(fs, bucket: str, model_dir: Path, tmp_path: Path, seed: int):
    """The same 4 pairs generated twice: from a local prompts file into a local folder, and
    from the bucket's copy of that file (``<bucket>/in/``) into ``<bucket>/run/g.parquet``.
    Returns the local output and the URL, after checking the URL's artifact is complete."""
    prompts = tmp_path / "prompts.parquet"
    result = runner.invoke(app, ["ingest", "builtin:personalization-train", "-o", str(prompts)])
    assert result.exit_code == 0, result.output
    fs.put(str(prompts), f"{bucket.split('://', 1)[1]}/in/prompts.parquet")
    settings = ["--model", str(model_dir), "--seed", str(seed), "--max-new-tokens", "5"]
    settings += ["--limit", "4", "--chunk-pairs", "2"]
    local_out = tmp_path / "local" / "g.parquet"
    args = ["generate", "--prompts", str(prompts), "--out", str(local_out), *settings]
    assert runner.invoke(app, args).exit_code == 0
    url = f"{bucket}/run/g.parquet"
    args = ["generate", "--prompts", f"{bucket}/in/prompts.parquet", "--out", url]
    result = runner.invoke(app, [*args, *settings])
    assert result.exit_code == 0, result.output
    assert is_complete(url)
    return local_out, url


def test_generate_and_score_read_and_write_s3_and_never_write_the_credentials(
    s3, tiny_model_dir, tmp_path
):
    local_out, url = _generate_here_and_in(s3, "s3://mipo-test", tiny_model_dir, tmp_path, 5)
    remote = read_artifact(url, GENERATIONS)
    assert remote.equals(read_artifact(local_out, GENERATIONS))
    manifest = read_manifest(url)
    assert manifest["output"]["path"] == url and manifest["output"]["rows"] == 4
    assert manifest["inputs"][0]["path"] == "s3://mipo-test/in/prompts.parquet"
    assert not s3.exists("mipo-test/run/g.parquet.parts")  # the journal is gone once complete

    scores = "s3://mipo-test/run/s.parquet"
    result = runner.invoke(
        app, ["score", "--generations", url, "--out", scores, "--model", str(tiny_model_dir)]
    )
    assert result.exit_code == 0, result.output
    assert read_artifact(scores, SCORES)["id"].to_list() == remote["id"].to_list()

    written = _written(s3, tmp_path)
    assert any(name.endswith("manifest.json") for name in written)
    for name, data in written.items():
        assert SECRET.encode() not in data, name
        assert KEY_ID.encode() not in data, name
    # The manifest is the last object: it vouches for the bytes of the data object.
    body = json.loads(s3.cat_file("mipo-test/run/s.manifest.json"))
    assert body["output"]["rows"] == 4


def test_journal_parts_live_under_the_output_prefix_and_resume(s3, tiny_model_dir, tmp_path):
    """A run stopped after its first chunk leaves parts beside the output; a rerun on
    another machine (here: another process state) finishes only the missing chunks."""
    prompts = tmp_path / "prompts.parquet"
    runner.invoke(app, ["ingest", "builtin:personalization-train", "-o", str(prompts)])
    s3.put(str(prompts), "mipo-test/resume/prompts.parquet")
    from mipo_engine.artifacts.journal import RowJournal
    from mipo_engine.stages.generate import GenerateConfig, run_generate

    options = {
        "prompts": "s3://mipo-test/resume/prompts.parquet",
        "model": str(tiny_model_dir),
        "max_new_tokens": 5,
        "limit": 4,
        "chunk_pairs": 2,
        "seed": 3,
    }
    full = read_artifact(
        run_generate(GenerateConfig.from_options(out=tmp_path / "full.parquet", **options)),
        GENERATIONS,
    )
    url = "s3://mipo-test/resume/g.parquet"
    config = GenerateConfig.from_options(out=url, **options)
    from mipo_engine.artifacts.run import StageRun

    run = StageRun("generate", url, config.identity(), {"prompts": options["prompts"]})
    journal = RowJournal(url, run.fingerprint)
    journal.append(full.head(2))  # the first chunk, as a killed run would have left it
    assert s3.exists("mipo-test/resume/g.parquet.parts/part-000000.parquet")
    out = run_generate(config)
    frame = read_artifact(out, GENERATIONS)
    assert frame.equals(full)
    assert read_manifest(out)["stats"]["chunks_this_run"] == 1


def test_an_s3_bucket_that_does_not_exist_exits_2_naming_the_option(s3, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.parquet"
    runner.invoke(app, ["ingest", "builtin:personalization-train", "-o", str(prompts)])
    before = set(s3.find("mipo-test"))
    result = runner.invoke(
        app,
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            "s3://no-such-bucket/g.parquet",
            "--model",
            str(tiny_model_dir),
        ],
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "'out'" in text and "no-such-bucket" in text and "does not exist" in text
    assert set(s3.find("mipo-test")) == before
    assert not s3.exists("no-such-bucket")
    missing = runner.invoke(
        app,
        [
            "generate",
            "--prompts",
            "s3://no-such-bucket/p.parquet",
            "--out",
            str(tmp_path / "g.parquet"),
        ],
    )
    assert missing.exit_code == 2, missing.output
    assert "s3://no-such-bucket/p.parquet" in " ".join(missing.output.split())
    assert not (tmp_path / "g.parquet").exists()


def _contexts_and_responses(folder: Path) -> tuple[Path, Path]:
    """A contexts artifact and a responses artifact whose items all have checkers."""
    import polars as pl

    from mipo_engine.artifacts.schemas import CONTEXTS, RESPONSES

    items = ["Answer in at most 3 sentences.", 'Do not use the word "basically".']
    contexts = folder / "contexts.parquet"
    rows = [
        {
            "id": f"s{i}:k{i}",
            "source_id": f"s{i}",
            "user_id": "u",
            "key": f"k{i}",
            "item": item,
            "context": " ".join(items),
            "prompt": "Some request",
            "source": "test",
            "attempts": 0,
        }
        for i, item in enumerate(items)
    ]
    pl.DataFrame(rows, schema=CONTEXTS.polars_schema()).write_parquet(contexts)
    texts = ["One. Two.", "Basically this. And that. And more. And more.", "Fine answer."]
    responses = folder / "responses.parquet"
    rows = [
        {"id": f"r{i}", "prompt": "Some request", "context_items": items, "response": texts[i % 3]}
        for i in range(6)
    ]
    pl.DataFrame(rows, schema=RESPONSES.polars_schema()).write_parquet(responses)
    return contexts, responses


def test_rubrics_and_judge_read_and_write_s3(s3, tmp_path):
    """The stages after generation take object-store URLs too: rubrics (checker items, no
    model) and judge (verify mode) write the rows of a local run, summary included."""
    from mipo_engine.artifacts.schemas import JUDGMENTS, RUBRICS

    contexts, responses = _contexts_and_responses(tmp_path)
    s3.put(str(contexts), "mipo-test/judge/contexts.parquet")
    s3.put(str(responses), "mipo-test/judge/responses.parquet")
    base = "s3://mipo-test/judge"
    for where, into in ((str(tmp_path), tmp_path / "local"), (base, base + "/out")):
        result = runner.invoke(
            app, ["rubrics", "--contexts", f"{where}/contexts.parquet", "-o", f"{into}/r.parquet"]
        )
        assert result.exit_code == 0, result.output
        args = ["judge", "--responses", f"{where}/responses.parquet", "--mode", "verify"]
        result = runner.invoke(app, [*args, "-o", f"{into}/j.parquet"])
        assert result.exit_code == 0, result.output
    local, remote = tmp_path / "local", f"{base}/out"
    assert read_artifact(f"{remote}/r.parquet", RUBRICS).equals(
        read_artifact(local / "r.parquet", RUBRICS)
    )
    judged = read_artifact(f"{remote}/j.parquet", JUDGMENTS)
    assert judged.height == 12 and judged.equals(read_artifact(local / "j.parquet", JUDGMENTS))
    summary = json.loads(s3.cat_file("mipo-test/judge/out/j.summary.json"))
    assert summary == json.loads((local / "j.summary.json").read_text())
    assert is_complete(f"{remote}/j.parquet") and is_complete(f"{remote}/r.parquet")
    for name, data in _written(s3, tmp_path).items():
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, name


def test_eval_writes_its_results_and_summary_to_s3(s3, tmp_path, monkeypatch):
    """``mipo eval --out s3://...`` (IFEval responses scored, no model): the rows and the
    summary of a local run, and ``--compare`` reads the remote output."""
    from mipo_engine.artifacts.schemas import EVAL
    from mipo_engine.sources.ifeval import load_ifeval

    prompts = [row["prompt"] for row in load_ifeval()[:3]]
    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(json.dumps({"prompt": p, "response": "A short answer."}) + "\n" for p in prompts)
    )
    s3.put(str(responses), "mipo-test/eval/responses.jsonl")
    local, remote = tmp_path / "e.parquet", "s3://mipo-test/eval/e.parquet"
    for source, out in (
        (str(responses), str(local)),
        ("s3://mipo-test/eval/responses.jsonl", remote),
    ):
        args = ["eval", "--task", "ifeval", "--responses", source, "-o", out]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert is_complete(remote)
    assert read_artifact(remote, EVAL).equals(read_artifact(local, EVAL))
    summary = json.loads(s3.cat_file("mipo-test/eval/e.summary.json"))
    expected = json.loads((tmp_path / "e.summary.json").read_text())
    assert summary["items"] == 3 and summary.pop("seconds_this_run") >= 0
    expected.pop("seconds_this_run")
    assert summary.pop("responses_file") == "s3://mipo-test/eval/responses.jsonl"
    assert expected.pop("responses_file") == str(responses)
    assert summary == expected
    result = runner.invoke(app, ["eval", "--compare", str(local), remote])
    assert result.exit_code == 0, result.output
    assert read_manifest(remote)["inputs"][-1]["path"] == "s3://mipo-test/eval/responses.jsonl"

    # --data from object storage: the benchmark file in its own layout, read like a local one.
    from mipo_engine.sources.ifeval import builtin_ifeval_path

    s3.put(str(builtin_ifeval_path()), "mipo-test/eval/input_data.jsonl")
    data = ["--data", "s3://mipo-test/eval/input_data.jsonl", "--responses", str(responses)]
    remote_data = "s3://mipo-test/eval/from-remote-data.parquet"
    downloads: list[str] = []
    real_filesystem = location.filesystem

    class Counting:  # the filesystem, recording what is downloaded through it
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, attribute):
            found = getattr(self.fs, attribute)
            if attribute not in ("get_file", "cat_file", "open"):
                return found

            def call(path, *args, **kwargs):
                downloads.append(str(path))
                return found(path, *args, **kwargs)

            return call

    def counting_filesystem(url):
        fs, path = real_filesystem(url)
        return Counting(fs), path

    monkeypatch.setattr(location, "filesystem", counting_filesystem)
    result = runner.invoke(app, ["eval", "--task", "ifeval", *data, "-o", remote_data])
    assert result.exit_code == 0, result.output
    # Hashed for the manifest and read for its rows, the source is downloaded once.
    assert [d for d in downloads if d.endswith("input_data.jsonl")] == [
        "mipo-test/eval/input_data.jsonl"
    ]
    monkeypatch.undo()
    assert read_artifact(remote_data, EVAL).equals(read_artifact(local, EVAL))
    assert read_manifest(remote_data)["inputs"][0] == {
        "role": "data",
        "path": "s3://mipo-test/eval/input_data.jsonl",
        "sha256": read_manifest(local)["inputs"][0]["sha256"],
        "bytes": read_manifest(local)["inputs"][0]["bytes"],
    }

    # A bad row of a remote file is named by its URL; a missing object by its option.
    s3.pipe_file("mipo-test/eval/bad.jsonl", b'{"prompt": "x"}\n')
    bad = ["eval", "--task", "ifeval", "--responses", "s3://mipo-test/eval/bad.jsonl"]
    result = runner.invoke(app, [*bad, "-o", str(tmp_path / "bad.parquet")])
    assert result.exit_code == 2, result.output
    assert "s3://mipo-test/eval/bad.jsonl" in " ".join(result.output.split())
    assert "row 1" in result.output and "mipo-fetch" not in result.output
    missing = ["eval", "--task", "ifeval", "--responses", "s3://mipo-test/eval/none.jsonl"]
    result = runner.invoke(app, [*missing, "-o", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2 and "'responses'" in result.output, result.output
    assert not (tmp_path / "bad.parquet").exists() and not (tmp_path / "none.parquet").exists()


def test_contexts_write_their_artifacts_to_s3(s3, tmp_path):
    """``mipo contexts`` reading its preference file from object storage and writing
    ``--out`` and ``--as-prompts`` there: the rows of a local run."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from scripted_backend import ScriptedBackend

    from mipo_engine.artifacts.schemas import CONTEXTS, PROMPTS
    from mipo_engine.stages.contexts import ContextsConfig, run_contexts

    reply = '{"response_length": "Keep replies short.", "tone": "Use a warm tone."}'
    rows = [
        {
            "id": f"row-{i}",
            "prompt": f"Question {i}?",
            "response_a": "Long answer.",
            "response_b": "Short.",
            "preferred": "B",
        }
        for i in range(3)
    ]
    preferences = tmp_path / "prefs.jsonl"
    preferences.write_text("".join(json.dumps(row) + "\n" for row in rows))
    s3.put(str(preferences), "mipo-test/contexts/in/prefs.jsonl")
    for where, source in (
        (str(tmp_path / "local"), str(preferences)),
        ("s3://mipo-test/contexts", "s3://mipo-test/contexts/in/prefs.jsonl"),
    ):
        config = ContextsConfig.from_options(
            preferences=source,
            out=f"{where}/c.parquet",
            as_prompts=f"{where}/p.parquet",
            chunk_rows=2,
        )
        run_contexts(config, backend=ScriptedBackend(lambda text, call: reply))
    remote = "s3://mipo-test/contexts"
    local = str(tmp_path / "local")
    assert is_complete(f"{remote}/c.parquet") and is_complete(f"{remote}/p.parquet")
    assert read_artifact(f"{remote}/c.parquet", CONTEXTS).equals(
        read_artifact(f"{local}/c.parquet", CONTEXTS)
    )
    prompts = read_artifact(f"{remote}/p.parquet", PROMPTS)
    assert prompts.equals(read_artifact(f"{local}/p.parquet", PROMPTS)) and prompts.height == 3


@pytest.fixture(scope="module")
def gcs():
    """A Google Cloud Storage emulator on 127.0.0.1 (``gcp-storage-emulator``, in memory) and
    a gcsfs client to it; ``STORAGE_EMULATOR_HOST`` points gcsfs there, as a user would."""
    import socket

    import fsspec
    import gcsfs  # the [ray] extra; the README's install line includes it
    from gcp_storage_emulator.server import create_server  # dev extra

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="mipo-gcs")
    server.start()
    patch = pytest.MonkeyPatch()
    patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    # What FSSPEC_GCS_TOKEN=anon in the environment sets when fsspec is imported after it.
    patch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    gcsfs.GCSFileSystem.clear_instance_cache()
    patch.undo()
    server.stop()


def test_generate_reads_and_writes_gs_urls_like_a_local_run(gcs, tiny_model_dir, tmp_path):
    local_out, url = _generate_here_and_in(gcs, "gs://mipo-gcs", tiny_model_dir, tmp_path, 8)
    assert read_artifact(url, GENERATIONS).equals(read_artifact(local_out, GENERATIONS))
    manifest = read_manifest(url)
    assert manifest["inputs"][0]["path"] == "gs://mipo-gcs/in/prompts.parquet"
    assert not gcs.exists("mipo-gcs/run/g.parquet.parts")
    assert sorted(gcs.ls("mipo-gcs/run")) == [
        "mipo-gcs/run/g.manifest.json",
        "mipo-gcs/run/g.parquet",
    ]
