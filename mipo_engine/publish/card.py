"""The dataset card (``README.md``) of a published preference set.

The card's YAML header is what the Hub and ``datasets`` read (``configs``/``data_files``,
license, task categories, tags, size category, pretty name); its body records provenance,
all taken from the manifests chain: the preferences manifest names its input generations,
whose manifest names its prompts, and every manifest records its stage's settings. From
those settings the card rebuilds the ``mipo`` commands that reproduce the set.

The body is ``prompts/dataset_card.md`` filled with ``mipo_engine.templates.fill``. Nothing
here reads the environment, so no token can reach the card.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from mipo_engine import __version__
from mipo_engine.artifacts.lineage import Step, find_step, locate_input, manifest_chain
from mipo_engine.artifacts.manifest import REDACTED
from mipo_engine.publish.folder import HubFolder
from mipo_engine.templates import render

CARD_TEMPLATE = "dataset_card.md"
SAMPLE_TEXT_CHARS = 300  # long strings in the sample record are cut to this many characters

SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)

STRATEGY_SENTENCES = {
    "missing-context": "the chosen response was sampled with the user's context in the prompt and "
    "the rejected one from the same prompt without it",
    "random-context": "the chosen response was sampled with the user's context and the rejected "
    "one with another user's context",
    "random-prompt": "the chosen response answers the prompt and the rejected one was sampled "
    "for a different prompt",
    "prompt": "each (prompt, context) pair is one unit; the chosen response answers the unit "
    "and the rejected one was sampled for a different unit",
}

FORMAT_NOTES = {
    "trl": "Standard TRL preference format: `prompt` is the rendered training prompt (chat "
    "template applied), `chosen` and `rejected` are the response strings. Use it with TRL's "
    "`DPOTrainer` as is.",
    "trl-conversational": "TRL conversational preference format: `prompt` is a list with the "
    "user message, `chosen` and `rejected` are lists with one assistant message. The trainer "
    "applies the model's chat template.",
    "openrlhf": "OpenRLHF chat format with an implicit prompt: `chosen` and `rejected` are "
    "complete conversations (user message, then the assistant's response). Train with "
    "`--apply_chat_template --chosen_key chosen --rejected_key rejected` and no "
    "`--prompt_key`. TRL reads it as implicit-prompt preference data.",
}

COLUMN_DOCS = {
    "id": "pair id (from `mipo generate`)",
    "prompt_id": "id of the prompt row the pair was generated for; all pairs of a prompt are "
    "in one split",
    "strategy": "negative strategy that produced the rejected response",
    "prompt": "the prompt both responses are trained under",
    "chosen": "the preferred response",
    "rejected": "the dispreferred response",
    "ref_chosen_logps": "log-probability of `chosen` under the reference model, summed over "
    "its tokens (`mipo score`); TRL's DPO collator reads this column",
    "ref_rejected_logps": "the same for `rejected`",
}


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` label for a row count."""
    for bound, label in SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


# --------------------------------------------------------------------------------------------
# Commands from manifests
# --------------------------------------------------------------------------------------------


def _cli_parameters(stage: str) -> list[Any] | None:
    """The parameters of ``mipo <stage>`` (from the pipeline's stage registry), or None when
    the stage has no command of its own (such as ``train-reference``)."""
    from mipo_engine.pipeline.stages import STAGE_KINDS

    kind = STAGE_KINDS.get(stage)
    return None if kind is None else list(kind.command().params)


def _parameter_for(key: str, parameters: list[Any]) -> Any | None:
    option = "--" + key.replace("_", "-")
    for parameter in parameters:
        if parameter.name == key or option in getattr(parameter, "opts", []):
            return parameter
    return None


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{name}={item}" for name, item in value.items())
    return str(value)


def _option_words(key: str, value: Any, parameter: Any | None) -> list[str]:
    """Command-line words for one setting (``[]`` when the setting is left at "unset")."""
    if value is None or value == REDACTED:
        return []
    if parameter is not None and parameter.param_type_name == "argument":
        values = value if isinstance(value, list) else [value]
        return [_text(item) for item in values]
    if parameter is not None:
        long_names = [name for name in parameter.opts if name.startswith("--")]
        name = long_names[0] if long_names else parameter.opts[0]
        if isinstance(value, bool) or getattr(parameter, "is_flag", False):
            if value:
                return [name]
            negative = [n for n in getattr(parameter, "secondary_opts", []) if n.startswith("--")]
            return negative[:1]
    else:
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            return [name] if value else [f"--no-{key.replace('_', '-')}"]
    values = value if isinstance(value, list) else [value]
    return [word for item in values for word in (name, _text(item))]


def stage_command(step: Step, display: dict[str, str]) -> str:
    """The ``mipo`` command that made ``step``, from its recorded settings.

    Settings are rendered against the stage's CLI command (positional arguments, flag names
    such as ``--keep-empty``). Paths of artifacts in the chain are shown as ``display`` maps them
    (their file names); a setting the CLI has no option for is listed in a trailing comment.
    """
    config = step.config
    output = (step.manifest.get("output") or {}).get("path")
    if output is not None:
        config["out"] = output
    parameters = _cli_parameters(step.stage)
    words = ["mipo", step.stage]
    unmatched = []
    for key, value in config.items():
        value = display.get(value, value) if isinstance(value, str) else value
        if isinstance(value, list):
            value = [display.get(v, v) if isinstance(v, str) else v for v in value]
        parameter = None if parameters is None else _parameter_for(key, parameters)
        if parameters is not None and parameter is None:
            if value is not None:
                unmatched.append(f"{key}={_text(value)}")
            continue
        words.extend(_option_words(key, value, parameter))
    line = shlex.join(words)
    if unmatched:
        line += "  # also recorded: " + ", ".join(unmatched)
    return line


def reproduce_commands(preferences: Path, *, repo_id: str | None = None) -> list[str]:
    """Commands that rebuild the set: one per stage of the chain, then ``mipo publish``.

    Paths of the chain's artifacts are shortened to their file names, so the commands run
    from one working folder and the folders the artifacts happen to sit in stay private
    (other values, such as a local model path, are shown as recorded).
    """
    chain = manifest_chain(preferences)
    display: dict[str, str] = {}
    for step in chain:
        display[str((step.manifest.get("output") or {}).get("path", step.path))] = step.path.name
        display[str(step.path)] = step.path.name
        for entry in step.manifest.get("inputs", []):
            recorded = str(entry.get("path", ""))
            if locate_input(recorded, step.path.parent) is not None:
                display[recorded] = Path(recorded).name
    commands = [stage_command(step, display) for step in chain]
    if repo_id is not None:
        commands.append(
            shlex.join(["mipo", "publish", "--preferences", preferences.name, "--repo-id", repo_id])
        )
    return commands


# --------------------------------------------------------------------------------------------
# Markdown pieces
# --------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def fenced(text: str, language: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
        return value[:SAMPLE_TEXT_CHARS] + f"... [{len(value) - SAMPLE_TEXT_CHARS} more chars]"
    if isinstance(value, dict):
        return {key: _shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten(item) for item in value]
    return value


def sample_record(frame: pl.DataFrame) -> dict[str, Any]:
    """The first row, without its split column, long strings cut for reading."""
    return _shorten(frame.drop("split").row(0, named=True))


def _iter_settings(step: Step | None, keys: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    if step is None:
        return
    for key in keys:
        if step.config.get(key) is not None:
            yield key, step.config[key]


# --------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------


def front_matter(
    *, pretty_name: str, license: str, export_format: str, hub_folder: HubFolder
) -> dict[str, Any]:
    """The card's YAML header as a mapping."""
    tags = ["dpo", "preference", "synthetic", "mipo", "mutual-information"]
    if export_format != "trl":
        tags.append("conversational")
    return {
        "pretty_name": pretty_name,
        "license": license,
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [size_category(sum(hub_folder.rows.values()))],
        "configs": [
            {
                "config_name": "default",
                "data_files": [
                    {"split": split, "path": f"data/{split}-*"} for split in hub_folder.files
                ],
            }
        ],
    }


def provenance_rows(chain: list[Step]) -> list[tuple[str, Any]]:
    """(what, value) rows describing how the pairs were generated and exported."""
    generate = find_step(chain, "generate")
    ingest = find_step(chain, "ingest")
    export = find_step(chain, "export")
    rows: list[tuple[str, Any]] = []
    if generate is not None:
        rows += [
            ("model", generate.manifest.get("model") or "unknown"),
            ("backend", generate.manifest.get("backend") or "unknown"),
            ("negative strategy", generate.config.get("strategy", "unknown")),
        ]
        sampling = (generate.manifest.get("stats") or {}).get("sampling") or {}
        rows += [(f"sampling: {key}", value) for key, value in sampling.items()]
        rows += [
            (f"generate: {key}", value)
            for key, value in _iter_settings(generate, ("n_pairs", "seed", "limit"))
        ]
    else:
        rows.append(("generation", "not traceable (no generations manifest found)"))
    if ingest is not None:
        rows.append(("prompt sources", ingest.config.get("inputs")))
        rows.append(("prompt rows", (ingest.manifest.get("output") or {}).get("rows")))
    if export is not None:
        stats = export.manifest.get("stats") or {}
        rows += [
            ("export format", stats.get("format")),
            ("reference log-probs", "included" if stats.get("reference_logps") else "not included"),
            ("split seed", export.config.get("seed")),
        ]
    rows.append(("mipo-engine version", __version__))
    return rows


def filter_rows(export_stats: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(filter, what it drops, setting, pairs removed) in the order the filters ran."""
    return [
        (count["filter"], count.get("description", ""), count.get("setting"), count["removed"])
        for count in export_stats.get("filters", [])
    ]


def _filters_section(export_stats: dict[str, Any]) -> str:
    counts = (
        f"{export_stats.get('input_pairs', '?')} generated pairs -> "
        f"{export_stats.get('output_pairs', '?')} exported pairs. Filters ran in this order, "
        "each on the pairs the earlier ones kept:"
    )
    rows = filter_rows(export_stats)
    if not rows:
        return counts.split(".")[0] + ". No filter was switched on."
    table = markdown_table(("filter", "drops pairs where", "setting", "removed"), rows)
    return f"{counts}\n\n{table}"


def split_rows(frame: pl.DataFrame, hub_folder: HubFolder) -> list[tuple[Any, ...]]:
    """(split, pairs, distinct prompts, files) for each published split."""
    prompts = dict(frame.group_by("split").agg(pl.col("prompt_id").n_unique()).iter_rows())
    return [
        (split, hub_folder.rows[split], prompts.get(split, 0), ", ".join(files))
        for split, files in hub_folder.files.items()
    ]


def _load_snippet(repo_id: str, export_format: str) -> str:
    lines = [
        "from datasets import load_dataset",
        "",
        f'dataset = load_dataset("{repo_id}")',
    ]
    if export_format in ("trl", "trl-conversational"):
        lines += [
            "",
            "# DPO with TRL:",
            "# from trl import DPOConfig, DPOTrainer",
            '# trainer = DPOTrainer(model=model_id, args=DPOConfig(output_dir="out"),',
            '#                      train_dataset=dataset["train"])',
        ]
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _summary(chain: list[Step], total: int, splits: int) -> str:
    generate = find_step(chain, "generate")
    strategy = generate.config.get("strategy") if generate is not None else None
    how = STRATEGY_SENTENCES.get(str(strategy), "see the provenance table below")
    return (
        f"{_count(total, 'preference pair')} in {_count(splits, 'split')}, built without "
        "human labels by "
        "mipo-engine following MIPO (mutual-information preference optimization): "
        f"{how}. Preferring the chosen response rewards answers that depend on their "
        "conditioning, i.e. a higher pointwise mutual information between the two."
    )


def dataset_card(
    *,
    preferences: Path,
    repo_id: str,
    license: str,
    pretty_name: str | None,
    hub_folder: HubFolder,
    frame: pl.DataFrame,
) -> str:
    """The full ``README.md`` text for a published preference set."""
    chain = manifest_chain(preferences)
    export = find_step(chain, "export")
    export_stats = (export.manifest.get("stats") or {}) if export is not None else {}
    export_format = str(export_stats.get("format") or "trl")
    name = pretty_name or repo_id.split("/", 1)[1]
    header = front_matter(
        pretty_name=name, license=license, export_format=export_format, hub_folder=hub_folder
    )
    generate = find_step(chain, "generate")
    model = generate.manifest.get("model") if generate is not None else None
    columns = [(f"`{c}`", COLUMN_DOCS.get(c, "")) for c in frame.columns if c != "split"]
    return render(
        CARD_TEMPLATE,
        front_matter=yaml.safe_dump(header, sort_keys=False, allow_unicode=True),
        title=name,
        summary=_summary(chain, frame.height, len(hub_folder.files)),
        load_snippet=_load_snippet(repo_id, export_format),
        format_notes=FORMAT_NOTES.get(export_format, ""),
        columns_table=markdown_table(("column", "meaning"), columns),
        provenance_table=markdown_table(("setting", "value"), provenance_rows(chain)),
        filters_section=_filters_section(export_stats),
        splits_table=markdown_table(
            ("split", "pairs", "prompts", "files"), split_rows(frame, hub_folder)
        ),
        sample_record=fenced(
            json.dumps(sample_record(frame), indent=2, ensure_ascii=False), "json"
        ),
        reproduce=fenced("\n".join(reproduce_commands(preferences, repo_id=repo_id)), "bash"),
        license_note=_license_note(license, model),
    )


def _license_note(license: str, model: str | None) -> str:
    source = f"`{model}`" if model else "the model named above"
    return (
        f"Released under `{license}`. The responses were generated by {source}; that model's "
        "terms of use apply to its outputs, and the prompts keep the licenses of their sources "
        "(listed under prompt sources above)."
    )
