"""The model-call skeleton: one settings base, the backend a run opens, the chunked loop."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from scripted_backend import ScriptedBackend

from mipo_engine.artifacts.journal import RowJournal
from mipo_engine.artifacts.schemas import first_repeat
from mipo_engine.errors import ConfigError
from mipo_engine.judging.judge import judge_identity
from mipo_engine.judging.rubric_writing import rubrics_identity
from mipo_engine.modelcalls.running import BackendHandle, run_chunks
from mipo_engine.modelcalls.settings import AskingConfig
from mipo_engine.stages.contexts import ContextsConfig
from mipo_engine.stages.eval import EvalConfig
from mipo_engine.stages.generate import GenerateConfig
from mipo_engine.stages.judge import JudgeConfig
from mipo_engine.stages.revise import ReviseConfig
from mipo_engine.stages.rubrics import RubricsConfig
from mipo_engine.stages.score import ScoreConfig

# (settings class, the option name its users write, its required settings, default chunk)
STAGES = [
    (ContextsConfig, "chunk_rows", {"preferences": "p.jsonl", "out": "c.parquet"}, 32),
    (RubricsConfig, "chunk_items", {"contexts": "c.parquet", "out": "r.parquet"}, 32),
    (
        JudgeConfig,
        "chunk_items",
        {"responses": "g.parquet", "out": "j.parquet", "mode": "rlaif"},
        32,
    ),
    (GenerateConfig, "chunk_pairs", {"prompts": "p.parquet", "out": "g.parquet"}, 32),
    (ScoreConfig, "chunk_rows", {"generations": "g.parquet", "out": "s.parquet"}, 64),
    (ReviseConfig, "chunk_rows", {"generations": "g.parquet", "out": "v.parquet"}, 32),
    (EvalConfig, "chunk_items", {"task": "gsm8k", "out": "e.parquet"}, 32),
]


@pytest.mark.parametrize(("config_class", "option", "required", "default"), STAGES)
def test_each_stage_keeps_its_chunk_option_name(
    config_class: type, option: str, required: dict, default: int
) -> None:
    assert config_class.from_options(**required).chunk_size == default
    # CLI options and pipeline config keys are checked against these names.
    assert option in config_class.option_names()
    assert "chunk_size" not in config_class.option_names()
    assert config_class.from_options(**required, **{option: 5}).chunk_size == 5
    with pytest.raises(ConfigError, match=f"config key '{option}'"):
        config_class.from_options(**required, **{option: 0})
    # The chunk size decides how a run is cut into resume units, not what it writes.
    small = config_class.from_options(**required, **{option: 1})
    assert small.identity() == config_class.from_options(**required).identity()
    assert "chunk_size" not in small.identity() and option not in small.identity()


def test_a_chunk_size_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="chunk_rows or chunk_size, not both"):
        ContextsConfig.from_options(
            preferences="p.jsonl", out="c.parquet", chunk_rows=4, chunk_size=8
        )


def test_unknown_settings_are_still_refused() -> None:
    """The base adds no option a stage did not have: score takes no server URL."""
    with pytest.raises(ConfigError, match="base_url"):
        ScoreConfig.from_options(generations="g.parquet", out="s.parquet", base_url="http://x")


def test_eval_side_files_have_the_stages_identities(tmp_path: Path) -> None:
    """``mipo eval`` judges through the same functions as ``mipo judge``/``mipo rubrics``;
    its side files must be decided by the same settings, or reruns would not resume them."""
    responses, rubrics, reference = (tmp_path / n for n in ("r.parquet", "b.parquet", "e.parquet"))
    options = {"backend": "openai", "model": "m", "base_url": "http://h", "batch_size": 3}
    settings = AskingConfig.from_options(**options)
    judge = JudgeConfig.from_options(
        responses=responses,
        out=tmp_path / "j.parquet",
        rubrics=rubrics,
        reference=reference,
        mode="rubric",
        **options,
    )
    assert judge.identity() == judge_identity(
        settings,
        responses=responses,
        rubrics=rubrics,
        reference=reference,
        mode="rubric",
        limit=None,
    )
    rubric_settings = AskingConfig.from_options(**options, max_new_tokens=384)
    made = RubricsConfig.from_options(contexts=responses, out=tmp_path / "x.parquet", **options)
    assert made.identity() == rubrics_identity(rubric_settings, contexts=responses, limit=None)


def test_backend_handle_closes_only_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    given = ScriptedBackend(lambda text, call: "ok")
    closed: list[str] = []
    monkeypatch.setattr(given, "close", lambda: closed.append("given"))
    with BackendHandle("hf", None, {}, given) as handle:
        assert handle.get() is given and handle.opened is given
    assert closed == []

    made = ScriptedBackend(lambda text, call: "ok")
    monkeypatch.setattr(made, "close", lambda: closed.append("made"))
    calls: list[tuple] = []

    def create(name: str, model: str | None, **options: object) -> ScriptedBackend:
        calls.append((name, model, options))
        return made

    monkeypatch.setattr("mipo_engine.modelcalls.running.create_backend", create)
    with BackendHandle("openai", "m", {"concurrency": 2}) as handle:
        assert handle.opened is None  # nothing is made before it is needed
        assert handle.get() is made and handle.get() is made
    assert calls == [("openai", "m", {"concurrency": 2})]
    assert closed == ["made"]


def test_run_chunks_journals_each_chunk_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    journal = RowJournal(output, "fingerprint")
    seen: list[list[str]] = []

    def work(chunk: list[str]) -> pl.DataFrame | None:
        seen.append(chunk)
        if chunk == ["c"]:
            return None  # nothing to keep from this chunk
        return pl.DataFrame({"id": chunk})

    ids = ["a", "b", "c"]
    run_chunks(ids, work, journal, chunk_size=2, label="rows", total=3, done=0)
    assert seen == [["a", "b"], ["c"]]
    assert RowJournal(output, "fingerprint").done_ids() == {"a", "b"}
    seen.clear()
    todo = [i for i in ids if i not in journal.done_ids()]
    run_chunks(todo, work, journal, chunk_size=2, label="rows", total=3, done=2, show="lines")
    assert seen == [["c"]]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [([], None), (["a", "b"], None), (["a", "b", "a"], (3, 1)), (["x", "y", "y", "x"], (3, 2))],
)
def test_first_repeat(ids: list[str], expected: tuple[int, int] | None) -> None:
    assert first_repeat(ids) == expected


@pytest.mark.parametrize(
    "config_class",
    [GenerateConfig, ScoreConfig, ContextsConfig, RubricsConfig, JudgeConfig, EvalConfig],
)
def test_every_model_calling_stage_takes_the_engine_settings(config_class) -> None:
    assert {"engine", "workers", "ray_address"} <= config_class.option_names()
    for field in ("engine", "workers", "ray_address"):
        assert config_class.model_fields[field].description  # the CLI's help text


def test_engine_settings_are_validated_and_left_out_of_the_identity(tmp_path: Path) -> None:
    options = {"prompts": tmp_path / "p.parquet", "out": tmp_path / "g.parquet"}
    with pytest.raises(ConfigError, match="'workers'"):
        GenerateConfig.from_options(**options, workers=0)
    with pytest.raises(ConfigError, match="'engine'"):
        GenerateConfig.from_options(**options, engine="spark")
    with pytest.raises(ConfigError, match="'ray_address'"):
        GenerateConfig.from_options(**options, ray_address="  ")
    local = GenerateConfig.from_options(**options)
    remote = GenerateConfig.from_options(
        **options, engine="ray", workers=4, ray_address="10.0.0.1:6379"
    )
    assert local.identity() == remote.identity()
    assert remote.engine_settings() == {
        "engine": "ray",
        "workers": 4,
        "ray_address": "10.0.0.1:6379",
    }


def test_pipeline_files_take_the_engine_keys(tmp_path: Path) -> None:
    from mipo_engine.pipeline.config import parse_pipeline

    config = parse_pipeline(
        {
            "run_dir": str(tmp_path),
            "defaults": {"workers": 2},
            "stages": [
                {"stage": "ingest", "inputs": ["builtin:general"]},
                {"stage": "generate", "engine": "ray", "ray_address": "auto"},
                {"stage": "score", "engine": "ray"},
            ],
        }
    )
    assert config.entry("generate").options["engine"] == "ray"


def test_object_store_urls_survive_the_cli_path_options() -> None:
    from mipo_engine.artifacts.location import as_location, is_url

    assert as_location(Path("s3://bucket/run/g.parquet")) == "s3://bucket/run/g.parquet"
    assert as_location("gs://bucket/g.parquet") == "gs://bucket/g.parquet"
    assert as_location("runs/g.parquet") == Path("runs/g.parquet")
    assert is_url("s3://b/k") and not is_url("/tmp/s3:/x")
