"""``mipo publish``: Hub folder layout, dataset card, upload path, secrets, load_preferences."""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from mipo_engine.artifacts.preferences import read_preferences
from mipo_engine.artifacts.schemas import GENERATIONS
from mipo_engine.artifacts.store import read_artifact, write_artifact
from mipo_engine.errors import ConfigError, InputError
from mipo_engine.publish import load_preferences
from mipo_engine.publish.card import fenced, markdown_table, size_category
from mipo_engine.publish.hub import PublishConfig

runner = CliRunner()
PLANTED_TOKEN = "hf_plantedTOKENvalue0123456789abcdefXYZ"
REPO = "someone/mipo-prefs"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir) -> Path:
    """ingest -> generate (tiny model) -> export, run like a user would: relative paths."""
    folder = tmp_path_factory.mktemp("chain")
    with contextlib.chdir(folder):
        invoke("ingest", "builtin:personalization-train", "--out", "p.parquet", "--limit", "6")
        invoke(
            "generate",
            "--prompts",
            "p.parquet",
            "--out",
            "g.parquet",
            "--model",
            str(tiny_model_dir),
            "--max-new-tokens",
            "8",
            "--n-pairs",
            "2",
            "--seed",
            "3",
        )
        invoke(
            "export",
            "--generations",
            "g.parquet",
            "--out",
            "prefs.parquet",
            "--split",
            "train=0.5,test=0.5",
            "--near-duplicates",
            "normalized",
        )
    return folder


def publish_local(chain: Path, target: Path, *extra: str) -> Path:
    with contextlib.chdir(chain):
        invoke(
            "publish",
            "--preferences",
            "prefs.parquet",
            "--repo-id",
            REPO,
            "--local-dir",
            str(target),
            *extra,
        )
    return target


def card_parts(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def rows_by_split(frame: pl.DataFrame) -> dict[str, list[dict]]:
    return {
        split: frame.filter(pl.col("split") == split).drop("split").to_dicts()
        for split in frame["split"].unique(maintain_order=True)
    }


# --------------------------------------------------------------------------------------------
# Folder and card
# --------------------------------------------------------------------------------------------


def test_published_folder_loads_as_exactly_the_exported_rows(chain, tmp_path):
    import datasets

    folder = publish_local(chain, tmp_path / "hub")
    # A cache of its own: the machine's may hold another folder called "hub".
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "datasets-cache"))
    expected = rows_by_split(read_preferences(chain / "prefs.parquet"))
    assert set(loaded) == set(expected) == {"train", "test"}
    for split, rows in expected.items():
        assert loaded[split].to_list() == rows
    from_file = load_preferences(chain / "prefs.parquet")
    from_folder = load_preferences(folder)
    for split in expected:
        assert from_file[split].to_list() == from_folder[split].to_list()
        assert from_file[split].features == from_folder[split].features


def test_card_yaml_parses_and_its_configs_match_the_files(chain, tmp_path):
    folder = publish_local(chain, tmp_path / "hub")
    header, _ = card_parts(folder)
    assert header["license"] == "other"
    assert header["task_categories"] == ["text-generation"]
    assert {"dpo", "preference", "synthetic"} <= set(header["tags"])
    assert header["size_categories"] == ["n<1K"]
    assert header["pretty_name"] == "mipo-prefs"
    (config,) = header["configs"]
    assert config["config_name"] == "default"
    files = sorted(str(p.relative_to(folder)) for p in (folder / "data").glob("*.parquet"))
    matched = []
    for entry in config["data_files"]:
        hits = sorted(str(p.relative_to(folder)) for p in folder.glob(entry["path"]))
        assert hits == [f"data/{entry['split']}-00000-of-00001.parquet"]
        matched += hits
    assert sorted(matched) == files


def test_card_body_records_provenance(chain, tmp_path, tiny_model_dir):
    folder = publish_local(chain, tmp_path / "hub")
    _, body = card_parts(folder)
    frame = read_preferences(chain / "prefs.parquet")
    assert f"| model | {tiny_model_dir} |" in body
    assert "| backend | hf |" in body
    assert "| negative strategy | missing-context |" in body
    assert "| sampling: max_new_tokens | 8 |" in body
    assert "| sampling: temperature | 1.0 |" in body
    assert f"{frame.height} exported pairs" in body
    assert "| near_duplicate | same text after normalising case and punctuation |" in body
    for split, count in frame["split"].value_counts().iter_rows():
        assert re.search(rf"\| {split} \| {count} \| \d+ \| data/{split}-00000-of-00001", body)
    assert f'"id": "{frame["id"][0]}"' in body  # the sample record is the first row
    assert f'load_dataset("{REPO}")' in body
    assert "builtin:personalization-train" in body


def test_card_commands_reproduce_the_set(chain, tmp_path):
    """Running the card's commands in an empty folder rebuilds the same preference rows."""
    folder = publish_local(chain, tmp_path / "hub")
    _, body = card_parts(folder)
    block = re.search(r"## Reproduce.*?```bash\n(.*?)\n```", body, re.S).group(1)
    lines = block.splitlines()
    assert [shlex.split(line)[1] for line in lines] == [
        "ingest",
        "generate",
        "export",
        "publish",
    ]
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    with contextlib.chdir(rebuilt):
        for line in lines[:-1]:  # all but the publish step
            invoke(*shlex.split(line, comments=True)[1:])
    original = read_preferences(chain / "prefs.parquet")
    again = read_preferences(rebuilt / "prefs.parquet")
    assert again.equals(original)


def test_large_splits_are_cut_into_numbered_shards(chain, tmp_path):
    import datasets

    folder = publish_local(chain, tmp_path / "hub", "--max-shard-mb", "0.0005")
    names = sorted(p.name for p in (folder / "data").glob("train-*.parquet"))
    count = len(names)
    assert count > 1
    assert names == [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    # No shard is empty (a reader cannot take a Parquet file without rows as a shard).
    shard_rows = [pl.read_parquet(folder / "data" / name).height for name in names]
    assert min(shard_rows) >= 1, shard_rows
    expected = rows_by_split(read_preferences(chain / "prefs.parquet"))
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "datasets-cache"))
    assert loaded["train"].to_list() == expected["train"]


def test_republishing_replaces_the_old_shards(chain, tmp_path):
    target = tmp_path / "hub"
    publish_local(chain, target, "--max-shard-mb", "0.0005")
    publish_local(chain, target)
    assert sorted(p.name for p in (target / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]


def test_dry_run_writes_beside_the_input_and_uploads_nothing(chain, monkeypatch):
    calls = fake_hub(monkeypatch)
    with contextlib.chdir(chain):
        invoke("publish", "--preferences", "prefs.parquet", "--repo-id", REPO, "--dry-run")
    assert (chain / "prefs-hub" / "README.md").is_file()
    assert calls == []


# --------------------------------------------------------------------------------------------
# Upload (the Hub is unreachable: HfApi's methods are replaced)
# --------------------------------------------------------------------------------------------


def fake_hub(monkeypatch, inspect_folder=None) -> list[tuple[str, dict]]:
    from huggingface_hub import HfApi

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs))
        if inspect_folder is not None:
            inspect_folder(Path(kwargs["folder_path"]))
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def every_file(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_upload_sends_the_folder_and_the_token_is_never_written(
    chain, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    uploaded: dict[str, bytes] = {}

    def inspect_folder(folder: Path) -> None:
        for path in every_file(folder):
            uploaded[str(path.relative_to(folder))] = path.read_bytes()

    calls = fake_hub(monkeypatch, inspect_folder)
    with contextlib.chdir(chain):  # export again with the token in the environment
        out = invoke("export", "--generations", "g.parquet", "--out", str(tmp_path / "p2.parquet"))
        out += invoke(
            "publish",
            "--preferences",
            str(tmp_path / "p2.parquet"),
            "--repo-id",
            REPO,
            "--private",
        )
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {
        "repo_id": REPO,
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    upload = calls[1][1]
    assert upload["repo_id"] == REPO and upload["repo_type"] == "dataset"
    assert upload["delete_patterns"] == ["data/*.parquet"]
    assert sorted(uploaded) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert f"https://huggingface.co/datasets/{REPO}" in out
    captured = capfd.readouterr()
    logs = out + captured.out + captured.err
    written = [p.read_bytes() for p in every_file(tmp_path) + every_file(chain)]
    for blob in [*uploaded.values(), *written, logs.encode()]:
        assert PLANTED_TOKEN.encode() not in blob
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is gone


def test_upload_without_a_token_is_a_clear_error(chain, monkeypatch):
    import huggingface_hub

    calls = fake_hub(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with contextlib.chdir(chain):
        result = runner.invoke(
            app, ["publish", "--preferences", "prefs.parquet", "--repo-id", REPO]
        )
    assert result.exit_code == 3
    assert "HF_TOKEN" in result.output and calls == []


def test_rows_that_look_like_secrets_are_refused_unless_forced(chain, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    secret = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
    generations = read_artifact(chain / "g.parquet", GENERATIONS)
    generations = generations.with_columns(
        pl.when(pl.int_range(pl.len()) == 1)
        .then(pl.lit(f"my key is {secret}"))
        .otherwise(pl.col("chosen"))
        .alias("chosen")
    )
    write_artifact(generations, tmp_path / "g.parquet", GENERATIONS, {"stage": "generate"})
    prefs = tmp_path / "p.parquet"
    invoke("export", "--generations", str(tmp_path / "g.parquet"), "--out", str(prefs))
    row = read_preferences(prefs)["chosen"].str.contains(secret, literal=True).arg_true()[0] + 1
    calls = fake_hub(monkeypatch)
    args = ["publish", "--preferences", str(prefs), "--repo-id", REPO]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert (
        f"row {row}," in refused.output
        and "'chosen'" in refused.output
        and "--force" in refused.output
    )
    assert secret not in refused.output and calls == []
    local = runner.invoke(app, [*args, "--local-dir", str(tmp_path / "hub")])
    assert local.exit_code == 0 and "warning" in local.output and calls == []
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert [name for name, _ in calls] == ["create_repo", "upload_folder"]


# --------------------------------------------------------------------------------------------
# Options and loading
# --------------------------------------------------------------------------------------------


def test_bad_repo_id_and_foreign_local_dir_are_refused(chain, tmp_path):
    with pytest.raises(ConfigError, match="repo_id"):
        PublishConfig.from_options(preferences=chain / "prefs.parquet", repo_id="no-owner")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = runner.invoke(
        app,
        [
            "publish",
            "--preferences",
            str(chain / "prefs.parquet"),
            "--repo-id",
            REPO,
            "--local-dir",
            str(foreign),
        ],
    )
    assert result.exit_code == 2 and "notes.txt" in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_publish_needs_an_exported_artifact(chain):
    result = runner.invoke(
        app, ["publish", "--preferences", str(chain / "g.parquet"), "--repo-id", REPO]
    )
    assert result.exit_code == 2 and "mipo export" in result.output


def test_load_preferences_reads_a_repo_id_with_load_dataset(monkeypatch, tmp_path):
    import datasets

    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: seen.append(name) or "loaded")
    with contextlib.chdir(tmp_path):
        assert load_preferences(REPO) == "loaded"
    assert seen == [REPO]
    with pytest.raises(InputError, match="not found"):
        load_preferences(tmp_path / "missing.parquet")


def test_card_helpers_by_hand():
    assert [size_category(n) for n in (0, 999, 1_000, 99_999, 100_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
    ]
    assert fenced("a ``` b", "json") == "````json\na ``` b\n````"
    assert markdown_table(("a", "b"), [("x|y", "line\nbreak")]) == (
        "| a | b |\n|---|---|\n| x\\|y | line break |"
    )


@pytest.mark.parametrize(
    ("rows", "nbytes", "limit"), [(6, 600, 100), (7, 700, 150), (5, 50, 1), (1, 10**6, 1)]
)
def test_shard_count_never_leaves_a_shard_empty(rows, nbytes, limit):
    """Shards of ceil(rows / count) rows each: every one holds at least one row, and none
    goes over the byte limit by more than the one row that rounding can add."""
    import math
    from types import SimpleNamespace

    from mipo_engine.publish.hub import shard_count

    count = shard_count(SimpleNamespace(num_rows=rows, nbytes=nbytes), limit)
    per_shard = math.ceil(rows / count)
    sizes = [min(per_shard, rows - i * per_shard) for i in range(count)]
    assert sum(sizes) == rows and min(sizes) >= 1, sizes
    row_bytes = nbytes / rows
    if row_bytes <= limit:
        assert per_shard * row_bytes <= limit + row_bytes  # at most one row over, from rounding
