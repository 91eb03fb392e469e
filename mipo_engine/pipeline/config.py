"""Pipeline files: YAML that declares the stages to run and their settings.

```yaml
run_dir: runs/quickstart          # every output goes here
rounds: 1                         # >1 repeats generate-score-export-train with the new policy
defaults: {model: default, seed: 0}   # given to every stage that has the setting
stages:
  - stage: ingest
    inputs: [builtin:personalization-train]
  - stage: generate
    strategy: missing-context
  - stage: eval
    name: eval_trained
    policy: train                 # evaluate the model trained by the stage named "train"
```
Input files of a stage (``prompts``, ``generations``, ``scores``...) are filled in from the
latest earlier stage that produces them; output paths are chosen by the runner. Every
mistake is reported with its key path (``stages[2].max_new_token``) before anything runs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mipo_engine.errors import ConfigError
from mipo_engine.pipeline.stages import STAGE_KINDS

TOP_LEVEL_KEYS = {"run_dir", "rounds", "defaults", "stages", "description"}
RUNNER_KEYS = {"stage", "name", "policy"}
DEFAULT_MODEL_NAMES = {"default", None}


@dataclass
class StageEntry:
    index: int
    kind: str
    name: str
    options: dict[str, Any]
    policy: str | None = None

    @property
    def key(self) -> str:
        return f"stages[{self.index}]"


@dataclass
class PipelineConfig:
    run_dir: Path
    stages: list[StageEntry]
    defaults: dict[str, Any] = field(default_factory=dict)
    rounds: int = 1
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def entry(self, name: str) -> StageEntry:
        for entry in self.stages:
            if entry.name == name:
                return entry
        raise ConfigError(f"no stage named {name!r}", key="stages")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}", key=key)
    return value


def _stage_fields() -> dict[str, set[str]]:
    return {name: kind.config_class().option_names() for name, kind in STAGE_KINDS.items()}


def parse_pipeline(raw: Any, *, source: Path | None = None) -> PipelineConfig:
    """Check the structure of a pipeline mapping; names every bad key with its path."""
    raw = _mapping(raw, "<top level>")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"unknown key; allowed: {sorted(TOP_LEVEL_KEYS)}", key=str(key))
    if "run_dir" not in raw:
        raise ConfigError("missing: the folder that receives every output", key="run_dir")
    run_dir = Path(str(raw["run_dir"]))
    if source is not None and not run_dir.is_absolute():
        run_dir = Path.cwd() / run_dir
    rounds = raw.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"must be an integer >= 1, got {rounds!r}", key="rounds")
    fields = _stage_fields()
    defaults = _mapping(raw.get("defaults") or {}, "defaults")
    every_field = set().union(*fields.values())
    for key in defaults:
        if key not in every_field:
            close = difflib.get_close_matches(str(key), sorted(every_field), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"no stage has this setting{hint}", key=f"defaults.{key}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("expected a non-empty list of stages", key="stages")
    entries: list[StageEntry] = []
    names: set[str] = set()
    for index, item in enumerate(stages_raw):
        key = f"stages[{index}]"
        item = dict(_mapping(item, key))
        kind = item.pop("stage", None)
        if kind not in STAGE_KINDS:
            raise ConfigError(
                f"unknown stage {kind!r}; choose one of {', '.join(STAGE_KINDS)}",
                key=f"{key}.stage",
            )
        name = str(item.pop("name", kind))
        if name in names:
            raise ConfigError(
                f"two stages are named {name!r}; give each a distinct name", key=f"{key}.name"
            )
        names.add(name)
        policy = item.pop("policy", None)
        for option in item:
            if option not in fields[kind]:
                close = difflib.get_close_matches(str(option), sorted(fields[kind]), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"'{kind}' has no setting {option!r}{hint}", key=f"{key}.{option}"
                )
        entries.append(StageEntry(index, kind, name, item, policy))
    for entry in entries:
        if entry.policy is not None:
            earlier = [e for e in entries[: entries.index(entry)] if e.name == entry.policy]
            if not earlier or earlier[0].kind != "train":
                raise ConfigError(
                    f"policy must name an earlier train stage, got {entry.policy!r}",
                    key=f"{entry.key}.policy",
                )
    return PipelineConfig(run_dir, entries, defaults, rounds, source, raw)


def load_pipeline(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_pipeline(raw, source=path)
