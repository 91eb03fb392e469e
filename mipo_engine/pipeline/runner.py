"""Run a pipeline: plan every stage's settings and files, then run what is out of date.

A stage is skipped when its output is complete and its fingerprint (settings plus the
content hashes of its input files) equals the one recorded when it last finished, so
changing one stage's option re-runs that stage and, through the changed file, the stages
that read it. A stage that was interrupted is simply run again: every stage resumes from its
own saved progress.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from mipo_engine.artifacts.manifest import describe_inputs, fingerprint, now_iso, redact
from mipo_engine.artifacts.store import is_complete, write_json_atomic
from mipo_engine.errors import ConfigError
from mipo_engine.pipeline.config import PipelineConfig, StageEntry
from mipo_engine.pipeline.stages import ROUND_STAGES, STAGE_KINDS, stage_wires

console = Console(stderr=True)
STATE_FILE = "state.json"


@dataclass
class PlannedStage:
    """One stage run with every setting resolved."""

    entry: StageEntry
    round: int
    options: dict[str, Any]
    output: Path
    input_keys: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.entry.name if self.round == 1 else f"round-{self.round}/{self.entry.name}"

    @property
    def kind(self) -> str:
        return self.entry.kind

    def fingerprint(self) -> str:
        inputs = {key: self.options.get(key) for key in self.input_keys}
        described = describe_inputs({k: v for k, v in inputs.items() if v is not None})
        settings = {k: v for k, v in self.options.items() if k not in self.input_keys}
        settings["_stage"] = self.kind
        return fingerprint(_jsonable(settings), described)

    def output_complete(self) -> bool:
        if self.kind == "train":
            return (self.output / "final").is_dir()
        if self.kind == "publish":
            return (self.output / "README.md").is_file()
        return is_complete(self.output)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class _TrainedPolicy:
    final: Path
    base_model: str | None
    lora: bool


def _round_blocks(entries: list[StageEntry]) -> tuple[list, list, list]:
    """(before, repeated block, after): the block spans the first round stage to the last
    train stage, so each round generates, scores, exports and trains again."""
    positions = [i for i, e in enumerate(entries) if e.kind in ROUND_STAGES]
    trains = [i for i, e in enumerate(entries) if e.kind == "train"]
    if not positions or not trains:
        return entries, [], []
    start, stop = positions[0], trains[-1] + 1
    return entries[:start], entries[start:stop], entries[stop:]


def plan_pipeline(config: PipelineConfig, *, rounds: int | None = None) -> list[PlannedStage]:
    """Resolve every stage's settings, inputs and output path, in run order."""
    rounds = rounds or config.rounds
    before, block, after = _round_blocks(config.stages)
    if rounds > 1 and not block:
        raise ConfigError("--rounds needs a train stage after a generate stage", key="rounds")
    sequence: list[tuple[StageEntry, int]] = [(e, 1) for e in before]
    for round_number in range(1, rounds + 1):
        sequence += [(e, round_number) for e in block]
    sequence += [(e, 1) for e in after]  # after the rounds: in the run folder, latest policy

    latest: dict[str, Path] = {}
    policies: dict[str, _TrainedPolicy] = {}
    current_policy: _TrainedPolicy | None = None
    planned: list[PlannedStage] = []
    for entry, round_number in sequence:
        kind = STAGE_KINDS[entry.kind]
        folder = config.run_dir if round_number == 1 else config.run_dir / f"round-{round_number}"
        output = folder / _output_name(entry, kind)
        fields = kind.config_class().option_names()
        options = {k: v for k, v in config.defaults.items() if k in fields}
        options.update(entry.options)
        if options.get("model") == "default":
            options["model"] = None
        if (
            round_number > 1
            and entry.kind in ROUND_STAGES
            and current_policy is not None
            and "model" in fields
        ):
            options["model"] = str(_merged_policy_path(current_policy))
            options.pop("adapter", None)
        if entry.policy is not None:
            policy = policies[entry.policy]
            if policy.lora and "adapter" in fields:
                options["model"], options["adapter"] = policy.base_model, str(policy.final)
            else:
                options["model"] = str(_merged_policy_path(policy))
        input_keys = []
        for key, kinds in stage_wires(kind, options).items():
            input_keys.append(key)
            if options.get(key) is not None:
                continue
            source = next((latest[k] for k in kinds if k in latest), None)
            if source is None and key not in kind.optional:
                raise ConfigError(
                    f"needs an earlier stage producing {' or '.join(kinds)}, or set it",
                    key=f"{entry.key}.{key}",
                )
            options[key] = str(source) if source is not None else None
        if entry.kind == "train" and options.get("prior") == "dice":
            # DICE: the prior is the previous round's policy, which scored this round's pairs.
            options.setdefault("prior_scores", options.get("scores"))
            input_keys.append("prior_scores")
        options[kind.output_key] = str(output)
        if entry.kind == "publish":
            options.setdefault("repo_id", "local/preferences")
        _validate(kind, options, entry)
        planned.append(PlannedStage(entry, round_number, options, output, input_keys))
        latest[kind.produces] = output
        if entry.kind == "train":
            lora = options.get("lora_r") is not None
            current_policy = _TrainedPolicy(output / "final", options.get("model"), lora)
            policies[entry.name] = current_policy
    return planned


def _output_name(entry: StageEntry, kind: Any) -> str:
    """Unnamed stages write files named after what they hold (prompts.parquet, ...)."""
    named_by_user = entry.name != entry.kind
    base = entry.name if named_by_user or kind.produces in ("model", "published") else kind.produces
    return base if kind.directory_output else f"{base}.parquet"


def _validate(kind: Any, options: dict[str, Any], entry: StageEntry) -> None:
    try:
        kind.config_class()(**options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(first["msg"], key=f"{entry.key}.{where}") from None


def _merged_policy_path(policy: _TrainedPolicy) -> Path:
    """A full model folder for a trained policy (LoRA adapters merged on first use)."""
    if not policy.lora:
        return policy.final
    return policy.final.parent / "merged"


def merge_lora(final: Path, base_model: str | None, target: Path) -> Path:
    """Merge a LoRA adapter into its base model and save the result (once)."""
    if (target / "config.json").is_file():
        return target
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo_engine.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_model))
    merged = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    AutoTokenizer.from_pretrained(str(final)).save_pretrained(staging)
    staging.rename(target)
    return target


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"stages": {}}


def _prepare_inputs(stage: PlannedStage) -> None:
    """Make policies that later rounds or evaluations load exist (merge LoRA adapters)."""
    model = stage.options.get("model")
    if model and str(model).endswith("/merged") and not Path(model).is_dir():
        final = Path(model).parent / "final"
        base = _train_base_model(Path(model).parent)
        console.print(f"Merging the LoRA adapter in {final} into a full model")
        merge_lora(final, base, Path(model))


def _train_base_model(train_dir: Path) -> str | None:
    adapter_config = train_dir / "final" / "adapter_config.json"
    if adapter_config.is_file():
        return json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    return None


def _call(stage: PlannedStage) -> None:
    kind = STAGE_KINDS[stage.kind]
    config = kind.config_class()(**stage.options)
    kind.run_function()(config)


def run_pipeline(
    config: PipelineConfig,
    *,
    from_stage: str | None = None,
    to_stage: str | None = None,
    rounds: int | None = None,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Run the pipeline; returns one status record per planned stage.

    With ``report`` (the default) the run folder's HTML report is refreshed at the end.
    """
    plan = plan_pipeline(config, rounds=rounds)
    names = [s.entry.name for s in plan]
    for label, value in (("from", from_stage), ("to", to_stage)):
        if value is not None and value not in names:
            raise ConfigError(
                f"no stage named {value!r}; stages: {', '.join(dict.fromkeys(names))}", key=label
            )
    start = names.index(from_stage) if from_stage else 0
    stop = len(names) - 1 - names[::-1].index(to_stage) if to_stage else len(names) - 1
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.source is not None:
        write_json_atomic(run_dir / "pipeline.json", redact(config.raw))
        shutil.copyfile(config.source, run_dir / "pipeline.yaml")
    state = _load_state(run_dir)
    records: list[dict[str, Any]] = []
    for position, stage in enumerate(plan):
        record = {"name": stage.id, "stage": stage.kind, "output": str(stage.output)}
        if position < start:
            if not stage.output_complete():
                raise ConfigError(
                    f"stage {stage.id!r} comes before --from but has no complete output",
                    key="from",
                )
            records.append({**record, "status": "given"})
            continue
        if position > stop:
            records.append({**record, "status": "not run"})
            continue
        _prepare_inputs(stage)
        current = stage.fingerprint()
        previous = state["stages"].get(stage.id, {})
        if previous.get("fingerprint") == current and stage.output_complete():
            console.print(f"[dim]{stage.id}: up to date[/]")
            records.append({**record, "status": "skipped", "seconds": 0.0})
            continue
        console.rule(f"[bold]{stage.id}[/] ({stage.kind})")
        started, began = now_iso(), time.perf_counter()
        state["stages"][stage.id] = {
            **record,
            "status": "running",
            "fingerprint": None,
            "started_at": started,
        }
        write_json_atomic(run_dir / STATE_FILE, state)
        _call(stage)
        seconds = round(time.perf_counter() - began, 2)
        state["stages"][stage.id] = {
            **record,
            "status": "done",
            "fingerprint": current,
            "started_at": started,
            "finished_at": now_iso(),
            "seconds": seconds,
        }
        write_json_atomic(run_dir / STATE_FILE, state)
        records.append({**record, "status": "done", "seconds": seconds})
    _print_summary(records)
    if report:
        _write_report(run_dir)
    return records


def _write_report(run_dir: Path) -> None:
    """Refresh ``RUN_DIR/report/index.html`` (a failure here never loses the run's work)."""
    from mipo_engine.report import write_report

    try:
        page = write_report(run_dir, run_dir / "report")
    except Exception as error:  # the run itself succeeded; say why the page is missing
        console.print(f"[yellow]report not written: {error}[/]")
        return
    console.print(f"report: {page}")


def _print_summary(records: list[dict[str, Any]]) -> None:
    table = Table(title="pipeline")
    for column in ("stage", "kind", "status", "seconds"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record["name"], record["stage"], record["status"], str(record.get("seconds", ""))
        )
    console.print(table)
