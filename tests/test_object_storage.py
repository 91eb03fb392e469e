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


def test_generate_and_score_read_and_write_s3_and_never_write_the_credentials(
    s3, tiny_model_dir, tmp_path
):
    prompts = tmp_path / "prompts.parquet"
    result = runner.invoke(app, ["ingest", "builtin:personalization-train", "-o", str(prompts)])
    assert result.exit_code == 0, result.output
    s3.put(str(prompts), "mipo-test/in/prompts.parquet")
    settings = ["--model", str(tiny_model_dir), "--seed", "5", "--max-new-tokens", "5"]
    settings += ["--limit", "4", "--chunk-pairs", "2"]
    local_out = tmp_path / "local" / "g.parquet"
    args = ["generate", "--prompts", str(prompts), "--out", str(local_out), *settings]
    assert runner.invoke(app, args).exit_code == 0
    url = "s3://mipo-test/run/g.parquet"
    args = ["generate", "--prompts", "s3://mipo-test/in/prompts.parquet", "--out", url]
    result = runner.invoke(app, [*args, *settings])
    assert result.exit_code == 0, result.output
    assert is_complete(url)
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
