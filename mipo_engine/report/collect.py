"""Read a run directory into plain data for ``mipo report``.

A run directory is what ``mipo run`` writes, or any folder the stages were pointed at by hand:
``*.manifest.json`` beside each Parquet artifact, a training folder with ``metrics.jsonl`` and
``train_manifest.json``, eval summaries, optionally ``pipeline.yaml``, ``state.json`` and
``round-N/`` folders of later iterative rounds laid out the same way. Artifacts are found by
their manifests' ``stage`` field, not by file name, one folder level deep.

Everything here is lenient: a report is a viewer, so a missing piece becomes a line in
``RunData.absent`` and an unreadable one a line in ``RunData.problems``, never an exception.
Every string that leaves this module has been through ``redact`` (manifests already are; the
pipeline config and model text may not be).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl

from mipo_engine.artifacts.lineage import names_file, recorded_places
from mipo_engine.artifacts.manifest import redact
from mipo_engine.artifacts.metrics_log import METRICS_FILE, read_metrics
from mipo_engine.artifacts.schemas import GENERATIONS, SCORES
from mipo_engine.artifacts.store import summary_path
from mipo_engine.errors import MipoError
from mipo_engine.report.data import (
    Artifact,
    EvalGroup,
    EvalRow,
    RunData,
    StageRow,
    TrainingData,
)
from mipo_engine.report.pairs import (
    build_pair_stats,
    exported_ids,
    finite_number,
    judge_scores_by_pair,
    pick_samples,
    read_frame,
)

TRAIN_MANIFEST_FILE = "train_manifest.json"
"""The training folder's manifest (``mipo_engine.training.checkpoints.MANIFEST_FILE``)."""
STAGE_ORDER = (
    "ingest",
    "contexts",
    "generate",
    "score",
    "rubrics",
    "judge",
    "export",
    "train-reference",
    "train",
    "eval",
)
"""Pipeline order, for artifacts that ``state.json`` does not place."""
_ROUND_FOLDER = re.compile(r"^round[-_]?(\d+)$")


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name}: not readable JSON ({error})")
        return None


def _data_file(manifest_file: Path) -> Path | None:
    """``X.manifest.json`` describes ``X.parquet`` (``artifacts.store.manifest_path``)."""
    if not manifest_file.name.endswith(".manifest.json"):
        return None
    data = manifest_file.with_name(manifest_file.name[: -len(".manifest.json")] + ".parquet")
    return data if data.is_file() else None


def _stage_rank(artifact: Artifact) -> tuple[int, str, str]:
    rank = STAGE_ORDER.index(artifact.stage) if artifact.stage in STAGE_ORDER else len(STAGE_ORDER)
    return rank, artifact.started_at, str(artifact.manifest_file)


def _content_folders(root: Path) -> list[Path]:
    """The run folder and its direct sub-folders, except rounds, journals and hidden ones."""
    folders = [root]
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith(".") or child.name.endswith(".parts"):
            continue
        if _ROUND_FOLDER.match(child.name):
            continue
        folders.append(child)
    return folders


def find_artifacts(root: Path, problems: list[str]) -> list[Artifact]:
    """Every manifest with a ``stage`` field, in the run folder and one level below."""
    found = []
    for folder in _content_folders(root):
        for manifest_file in sorted(folder.glob("*manifest.json")):
            manifest = _read_json(manifest_file, problems)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str):
                continue  # not a stage manifest (or already reported as unreadable)
            manifest = redact(manifest)
            found.append(
                Artifact(manifest["stage"], manifest_file, manifest, _data_file(manifest_file))
            )
    return sorted(found, key=_stage_rank)


def find_unfinished(root: Path) -> list[StageRow]:
    """Parquet files without a manifest and journals of stages stopped part-way."""
    rows = []
    for folder in _content_folders(root):
        for data in sorted(folder.glob("*.parquet")):
            if not data.with_name(data.stem + ".manifest.json").is_file():
                rows.append(StageRow(data.stem, "?", "incomplete", _relative(data, root)))
        for parts in sorted(folder.glob("*.parts")):
            output = parts.with_name(parts.name[: -len(".parts")])
            if output.with_name(output.stem + ".manifest.json").is_file():
                continue  # complete; killed only before the journal was removed
            saved = _journal_rows(parts)
            note = f"about {saved} rows saved; rerun the same command to resume"
            rows.append(
                StageRow(output.stem, "?", "interrupted", _relative(output, root), note=note)
            )
    return rows


def _journal_rows(parts: Path) -> int:
    total = 0
    for part in parts.glob("part-*.parquet"):
        try:
            total += pl.scan_parquet(part).select(pl.len()).collect().item()
        except Exception:  # a torn part is skipped by the stage too
            continue
    return total


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Pipeline table
# --------------------------------------------------------------------------------------------


def read_state(root: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The stage records of ``state.json`` (written by ``mipo run``), in run order.

    ``stages`` is a mapping from stage id to record (``pipeline.runner``); a list of records
    is read too. Stages of later rounds have ids ``round-N/<name>``.
    """
    path = root / "state.json"
    if not path.is_file():
        return []
    state = _read_json(path, problems)
    stages = state.get("stages") if isinstance(state, dict) else None
    if isinstance(stages, dict):
        stages = [
            {"name": key, **value} for key, value in stages.items() if isinstance(value, dict)
        ]
    if not isinstance(stages, list):
        if state is not None:
            problems.append("state.json: expected an object with a 'stages' mapping")
        return []
    return [redact(entry) for entry in stages if isinstance(entry, dict)]


def state_of_round(state: list[dict[str, Any]], round_folder: str | None) -> list[dict[str, Any]]:
    """The records of one round: ``round-N/`` ids for a round folder, the others for the run."""
    entries = []
    for entry in state:
        name = str(entry.get("name") or "")
        prefix, _, rest = name.partition("/")
        in_round = bool(rest) and _ROUND_FOLDER.match(prefix) is not None
        if round_folder is None and not in_round:
            entries.append(entry)
        elif round_folder is not None and in_round and prefix == round_folder:
            entries.append({**entry, "name": rest})
    return entries


def _output_of(artifact: Artifact) -> Path:
    """The path a stage was told to write: the Parquet file, or the training folder."""
    if artifact.data_file is not None:
        return artifact.data_file
    if artifact.manifest_file.name == TRAIN_MANIFEST_FILE:
        return artifact.manifest_file.parent
    return artifact.manifest_file


def _rows_in(artifact: Artifact, artifacts: list[Artifact], root: Path) -> int | None:
    """Rows of the stage's first input that is an artifact of this run."""
    for entry in artifact.manifest.get("inputs") or []:
        for other in artifacts:
            if other is not artifact and names_file(entry.get("path"), other.data_file, root):
                return other.rows
    return None


def _note(artifact: Artifact) -> str:
    """A short remark for the pipeline table: what the stage's stats say at a glance."""
    stats = artifact.stats
    if artifact.stage == "generate":
        notes = []
        if stats.get("failed"):
            notes.append(f"{len(stats['failed'])} failed")
        if stats.get("tokens_per_second_this_run"):
            notes.append(f"{stats['tokens_per_second_this_run']:.1f} tokens/s")
        return ", ".join(notes)
    if artifact.stage == "export":
        kept, total = stats.get("output_pairs"), stats.get("input_pairs")
        if isinstance(kept, int) and isinstance(total, int) and total:
            return f"kept {kept} of {total} pairs ({100 * kept / total:.0f}%)"
    if artifact.stage == "score" and stats.get("pmi_chosen_mean") is not None:
        return f"mean PMI {stats['pmi_chosen_mean']:.3f}"
    if artifact.stage == "train" and artifact.manifest.get("method") not in (None, "offline"):
        method, reward = artifact.manifest.get("method"), artifact.manifest.get("reward")
        prompts = artifact.manifest.get("prompts")
        return f"{method} ({reward}): {stats.get('global_step')} steps on {prompts} prompts"
    if artifact.stage == "train":
        steps = stats.get("global_step")
        pairs = artifact.manifest.get("pairs")
        loss = (artifact.manifest.get("loss") or {}).get("loss")
        return f"{loss or '?'}: {steps} steps on {pairs} pairs"
    if artifact.stage == "eval":
        return str(stats.get("task") or "")
    if artifact.stage == "judge":
        return f"{stats.get('mode', '')} judge, {stats.get('responses', '?')} responses"
    return ""


def build_stage_rows(
    artifacts: list[Artifact], state: list[dict[str, Any]], unfinished: list[StageRow], root: Path
) -> list[StageRow]:
    """The pipeline table: ``state.json``'s order first, then the remaining artifacts, then
    outputs left unfinished (Parquet without manifest, resume journals)."""
    rows: list[StageRow] = []
    placed: set[int] = set()
    leftovers = list(unfinished)
    for entry in state:
        recorded = entry.get("output")
        match = next(
            (
                a
                for a in artifacts
                if id(a) not in placed and names_file(recorded, _output_of(a), root)
            ),
            None,
        )
        row = StageRow(
            name=str(entry.get("name") or entry.get("stage") or "?"),
            stage=str(entry.get("stage") or (match.stage if match else "?")),
            status=str(entry.get("status") or ("done" if match else "not run")),
            output=_display_path(recorded, root),
            seconds=_number(entry.get("seconds")),
        )
        if match is not None:
            placed.add(id(match))
            _fill_from_artifact(row, match, artifacts, root)
        elif row.status == "running":
            # mipo run marks a stage running before calling it and done after: a record
            # still running without a complete output was killed or failed part-way.
            partial = next(
                (u for u in leftovers if names_file(recorded, root / u.output, root)), None
            )
            if partial is not None:
                leftovers.remove(partial)
                row.status, row.note = partial.status, partial.note
            else:
                row.status = "stopped"
                row.note = "no complete output (killed or failed); rerun mipo run to resume"
        rows.append(row)
    for artifact in artifacts:
        if id(artifact) in placed:
            continue
        output = _relative(_output_of(artifact), root)
        row = StageRow(name=Path(output).stem, stage=artifact.stage, status="done", output=output)
        _fill_from_artifact(row, artifact, artifacts, root)
        rows.append(row)
    return rows + leftovers


def _display_path(recorded: Any, root: Path) -> str:
    """A recorded output path, shown relative to the run folder where it lies inside it."""
    if not recorded:
        return ""
    path = Path(str(recorded))
    for place in recorded_places(path, root):
        if place.exists() and place.is_relative_to(root.resolve()):
            return str(place.relative_to(root.resolve()))
    return path.name if path.parent.name == root.resolve().name else str(path)


def _fill_from_artifact(
    row: StageRow, artifact: Artifact, artifacts: list[Artifact], root: Path
) -> None:
    row.rows_in = _rows_in(artifact, artifacts, root)
    if artifact.stage == "train":
        row.rows_in = row.rows_in or _int(artifact.manifest.get("pairs"))
    else:
        row.rows_out = artifact.rows
    if row.seconds is None:
        row.seconds = artifact.seconds
    row.note = _note(artifact)


def _number(value: Any) -> float | None:
    """A finite float from a JSON value; metrics files write NaN and inf as strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def read_metrics_records(path: Path) -> list[dict[str, float]]:
    """Numeric fields of each ``metrics.jsonl`` record (``artifacts.metrics_log``).

    NaN and inf (written as strings, ``training.metrics``) become floats, so a diverged run
    shows as gaps in its curves instead of breaking the report.
    """
    records = []
    for raw in read_metrics(path):
        if not isinstance(raw, dict):
            continue
        numbers = {str(key): _number(value) for key, value in raw.items()}
        records.append({key: value for key, value in numbers.items() if value is not None})
    return records


def find_training(
    root: Path, artifacts: list[Artifact], problems: list[str]
) -> TrainingData | None:
    """The first training folder: one with ``metrics.jsonl`` or a finished train manifest."""
    manifests = {a.manifest_file.parent: a.manifest for a in artifacts if a.stage == "train"}
    folders = [f for f in _content_folders(root) if (f / METRICS_FILE).is_file()]
    folders += [f for f in manifests if f not in folders]
    if not folders:
        return None
    if len(folders) > 1:
        names = ", ".join(_relative(f, root) or "." for f in folders[1:])
        problems.append(f"several training folders; showing the first (also: {names})")
    folder = folders[0]
    metrics = folder / METRICS_FILE
    records = read_metrics_records(metrics) if metrics.is_file() else []
    return TrainingData(_relative(folder, root) or ".", records, manifests.get(folder))


# --------------------------------------------------------------------------------------------
# Evaluation and judging
# --------------------------------------------------------------------------------------------


def _eval_label(artifact: Artifact) -> str:
    stem = artifact.data_file.stem if artifact.data_file else artifact.manifest_file.stem
    stem = stem.removesuffix(".manifest")
    return stem.removeprefix("eval_").removeprefix("eval-") or stem


_BASELINE_WORD = re.compile(r"(^|[_\-])(base|baseline|before|pre|ref|reference)($|[_\-])")


def _baseline_first(artifact: Artifact) -> tuple[int, int, str]:
    """Sort key putting the baseline first: a name with a word like ``base`` or ``before``
    (``eval_base``), then evals without an adapter, then by start time."""
    looks_base = _BASELINE_WORD.search(_eval_label(artifact).lower()) is not None
    has_adapter = bool((artifact.manifest.get("config") or {}).get("adapter"))
    return (0 if looks_base else 1, 1 if has_adapter else 0, artifact.started_at)


def _summary_of(artifact: Artifact, problems: list[str]) -> dict[str, Any]:
    summary_file = summary_path(artifact.data_file) if artifact.data_file else None
    if summary_file is not None and summary_file.is_file():
        summary = _read_json(summary_file, problems)
        if isinstance(summary, dict):
            return redact(summary)
    return artifact.stats


def build_eval_groups(artifacts: list[Artifact], problems: list[str]) -> list[EvalGroup]:
    """Eval outputs grouped by task; paired differences to the baseline where possible."""
    by_task: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        if artifact.stage == "eval":
            task = str(_summary_of(artifact, problems).get("task") or "unknown")
            by_task.setdefault(task, []).append(artifact)
    groups = []
    for task, members in by_task.items():
        members.sort(key=_baseline_first)
        rows = [
            EvalRow(
                label=_eval_label(a),
                model=str((a.manifest.get("config") or {}).get("model") or "default"),
                adapter=(a.manifest.get("config") or {}).get("adapter"),
                summary=_summary_of(a, problems),
            )
            for a in members
        ]
        paired = len(members) > 1 and _add_paired_differences(rows, members, problems)
        kind = str(rows[0].summary.get("kind") or "")
        groups.append(EvalGroup(task, kind, rows, paired))
    return groups


def _add_paired_differences(
    rows: list[EvalRow], members: list[Artifact], problems: list[str]
) -> bool:
    """Per-item differences to the first output (``mipo eval --compare``'s numbers)."""
    from mipo_engine.evaluation.compare import compare_evals

    if any(a.data_file is None for a in members):
        return False
    try:
        entries = compare_evals([a.data_file for a in members])  # type: ignore[misc]
    except (MipoError, ValueError) as error:
        problems.append(f"eval comparison for {rows[0].summary.get('task')}: {error}")
        return False
    for row, entry in zip(rows, entries, strict=True):
        row.difference = redact(entry["difference_to_first"])
    return True


def build_judging(artifacts: list[Artifact]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (_relative(_output_of(a), a.manifest_file.parent), a.stats)
        for a in artifacts
        if a.stage == "judge"
    ]


# --------------------------------------------------------------------------------------------
# Header and what is absent
# --------------------------------------------------------------------------------------------


def _read_pipeline(root: Path, problems: list[str]) -> dict[str, Any] | None:
    """``pipeline.yaml``, parsed and redacted (a secret may sit under any key)."""
    path = root / "pipeline.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        problems.append(f"pipeline.yaml: not readable YAML ({str(error).splitlines()[0]})")
        return None
    if not isinstance(loaded, dict):
        problems.append("pipeline.yaml: expected a mapping at the top level")
        return None
    return redact(loaded)


def build_header(run: RunData) -> dict[str, str]:
    """Run name, model, strategy, backend and loss, from whichever artifacts hold them."""
    generate, train = run.first("generate"), run.first("train")
    pipeline = run.pipeline or {}
    header: dict[str, str] = {"run": str(pipeline.get("name") or run.label)}
    model = (generate and generate.manifest.get("model")) or (train and train.manifest.get("model"))
    model = model or pipeline.get("model")
    if model:
        header["model"] = str(model)
    if generate is not None:
        config = generate.manifest.get("config") or {}
        for key in ("strategy", "backend"):
            if config.get(key):
                header[key] = str(config[key])
    online = (run.training.manifest or {}) if run.training is not None else {}
    if online.get("method") not in (None, "offline"):
        header["loss"] = f"{online['method']}, reward {online.get('reward')}"
    elif run.training is not None and run.training.loss:
        loss = run.training.loss
        text = str(loss.get("loss"))
        extras = [
            f"{k}={loss[k]:g}" for k in ("beta", "gamma", "eta") if finite_number(loss.get(k))
        ]
        if loss.get("prior"):
            extras.append(f"prior={loss['prior']}")
        if extras:
            text += f" ({', '.join(extras)})"
        header["loss"] = text
    versions = {a.manifest.get("package_version") for a in run.artifacts} - {None}
    if versions:
        header["mipo-engine"] = ", ".join(sorted(str(v) for v in versions))
    return {key: redact(value) for key, value in header.items()}


def list_absent(run: RunData, *, in_round: bool = False) -> list[str]:
    """One line per expected piece the run does not have, saying which command makes it.

    A later round (``round-N/``) repeats only generate, score, export and train.
    """
    absent = []
    wanted = [("ingest", "prompts (mipo ingest)")] if not in_round else []
    wanted += [
        ("generate", "generated pairs (mipo generate)"),
        ("score", "reference scores and PMI (mipo score)"),
        ("export", "exported preferences and filter counts (mipo export)"),
    ]
    for stage, text in wanted:
        if run.first(stage) is None:
            absent.append(text)
    if run.training is None:
        absent.append("training curves (mipo train)")
    if in_round:
        return absent
    if not run.evals:
        absent.append("evaluation results (mipo eval)")
    if not run.judging:
        absent.append("judge scores (mipo judge)")
    return absent


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _round_folders(root: Path) -> list[Path]:
    found = [
        (int(match.group(1)), child)
        for child in root.iterdir()
        if child.is_dir() and (match := _ROUND_FOLDER.match(child.name))
    ]
    return [child for _, child in sorted(found)]


def collect_run(root: str | Path, *, samples: int = 5, seed: int = 0) -> RunData:
    """Read ``root`` (a run directory) into a ``RunData``; ``round-N/`` folders as rounds."""
    root = Path(root)
    problems: list[str] = []
    state = read_state(root, problems)
    run = collect_folder(
        root, state_of_round(state, None), samples=samples, seed=seed, label=root.resolve().name
    )
    run.absent = list_absent(run)
    run.problems[:0] = problems
    for folder in _round_folders(root):
        entries = state_of_round(state, folder.name)
        run.rounds.append(
            collect_folder(folder, entries, samples=samples, seed=seed, label=folder.name)
        )
        run.rounds[-1].absent = list_absent(run.rounds[-1], in_round=True)
    return run


def collect_folder(
    root: Path, state: list[dict[str, Any]], *, samples: int, seed: int, label: str
) -> RunData:
    """One round's folder, with its ``state.json`` records."""
    run = RunData(root=root, label=label)
    run.pipeline = _read_pipeline(root, run.problems)
    run.artifacts = find_artifacts(root, run.problems)
    run.stages = build_stage_rows(run.artifacts, state, find_unfinished(root), root)
    export = run.first("export")
    run.export = export.stats if export is not None else None
    run.training = find_training(root, run.artifacts, run.problems)
    run.evals = build_eval_groups(run.artifacts, run.problems)
    run.judging = build_judging(run.artifacts)
    generations = read_frame(run.first("generate"), GENERATIONS, run.problems)
    scores = read_frame(run.first("score"), SCORES, run.problems)
    if generations is not None:
        run.pairs = build_pair_stats(generations, scores, seed)
        run.samples = pick_samples(
            generations,
            scores=scores,
            kept_ids=exported_ids(export, run.problems),
            judge_scores=judge_scores_by_pair(run.artifacts, run.problems) if run.judging else None,
            count=samples,
            seed=seed,
        )
    run.header = build_header(run)
    return run
