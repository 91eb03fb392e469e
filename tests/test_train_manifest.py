"""The train stage's manifest goes through the stage kernel (``StageRun``), like every stage's."""

from __future__ import annotations

import json
from pathlib import Path

from mipo_engine.artifacts.manifest import REDACTED, describe_inputs, fingerprint
from mipo_engine.artifacts.run import StageRun


def test_folder_manifest_records_the_kernel_fields_and_the_stage_fields(tmp_path: Path) -> None:
    """The fingerprint covers what ``StageRun`` was given (the weight-changing settings and
    the inputs' contents); ``config`` records the whole settings, secrets redacted; the
    stage's own fields stand beside the kernel's."""
    pairs = tmp_path / "pairs.parquet"
    pairs.write_bytes(b"not parquet, only hashed")
    identity = {"loss": "dpo", "seed": 0}
    run = StageRun("train", tmp_path / "out", identity, {"preferences": pairs, "scores": None})
    settings = {**identity, "output_dir": str(tmp_path / "out"), "hf_token": "hf_" + "a" * 30}
    path = run.write_folder_manifest(
        tmp_path / "out" / "train_manifest.json",
        settings=settings,
        model="default",
        stats={"global_step": 3},
        model_path="/models/tiny",
        pairs=12,
    )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    assert set(manifest) == {
        "stage", "package_version", "config", "fingerprint", "inputs", "model", "model_path",
        "pairs", "stats", "started_at", "finished_at",
    }  # fmt: skip
    assert manifest["stage"] == "train" and manifest["model"] == "default"
    assert manifest["fingerprint"] == fingerprint(identity, describe_inputs({"preferences": pairs}))
    assert manifest["inputs"] == [
        {"role": "preferences", "path": str(pairs), "sha256": run.input_info[0]["sha256"],
         "bytes": pairs.stat().st_size}
    ]  # fmt: skip
    assert manifest["config"]["hf_token"] == REDACTED
    assert manifest["config"]["output_dir"] == str(tmp_path / "out")
    assert (manifest["model_path"], manifest["pairs"]) == ("/models/tiny", 12)
    assert manifest["stats"] == {"global_step": 3}
    assert manifest["started_at"] <= manifest["finished_at"]
    assert not list(path.parent.glob("*.tmp"))  # written atomically


def test_a_finished_folder_is_recognised_by_its_fingerprint(tmp_path: Path) -> None:
    from mipo_engine.training.checkpoints import FINAL_DIR, MANIFEST_FILE, is_finished

    run = StageRun("train", tmp_path, {"loss": "dpo"}, {})
    (tmp_path / FINAL_DIR).mkdir()
    assert not is_finished(tmp_path, run.fingerprint)  # no manifest yet
    run.write_folder_manifest(tmp_path / MANIFEST_FILE, settings={}, model=None, stats={})
    assert is_finished(tmp_path, run.fingerprint)
    other = StageRun("train", tmp_path, {"loss": "mio"}, {})
    assert not is_finished(tmp_path, other.fingerprint)
