"""Lineage read from manifests: recorded input paths found again, chains walked inputs first."""

from __future__ import annotations

import json
from pathlib import Path

from mipo_engine.artifacts.lineage import find_step, locate_input, manifest_chain, names_file


def _artifact(path: Path, stage: str, inputs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1")
    manifest = {"stage": stage, "config": {}, "inputs": [{"path": p} for p in inputs]}
    path.with_name(path.stem + ".manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_chain_recorded_on_another_machine_is_found_beside_the_output(tmp_path):
    """Paths recorded elsewhere (absolute, or relative to another folder) resolve by file
    name in the folder of the manifest that records them; a user's file ends the walk."""
    run = tmp_path / "copied-run"
    _artifact(run / "prompts.parquet", "ingest", ["/home/someone/my_prompts.jsonl"])
    _artifact(run / "gen.parquet", "generate", ["/elsewhere/run/prompts.parquet"])
    _artifact(run / "scores.parquet", "score", ["runs/demo/gen.parquet"])
    prefs = _artifact(
        run / "prefs.parquet", "export", ["runs/demo/gen.parquet", "runs/demo/scores.parquet"]
    )
    chain = manifest_chain(prefs)
    assert [step.stage for step in chain] == ["ingest", "generate", "score", "export"]
    assert find_step(chain, "generate").path == run / "gen.parquet"
    assert find_step(chain, "train") is None


def test_locate_input_needs_a_complete_artifact(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1")  # no manifest: not complete
    assert locate_input("a.parquet", tmp_path) is None
    _artifact(tmp_path / "sub" / "b.parquet", "ingest", [])
    # Relative to the folder of the recording manifest, with its sub-folder.
    assert locate_input("sub/b.parquet", tmp_path) == tmp_path / "sub" / "b.parquet"


def test_names_file_matches_by_place_or_by_name_and_parent(tmp_path):
    root = tmp_path / "run"
    inner = root / "gen" / "x.parquet"
    inner.parent.mkdir(parents=True)
    inner.write_bytes(b"")
    assert names_file(str(inner), inner, root)  # absolute, same place
    assert names_file("gen/x.parquet", inner, root)  # relative to the run folder
    assert names_file("/other/machine/gen/x.parquet", inner, root)  # same name and parent
    assert names_file("x.parquet", inner, root)  # a bare name
    assert not names_file("/other/machine/elsewhere/x.parquet", inner, root)
    assert not names_file("gen/y.parquet", inner, root)
    assert not names_file(None, inner, root) and not names_file("x.parquet", None, root)
