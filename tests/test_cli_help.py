"""Every command of ``mipo`` keeps its options and their help text.

The snapshot in ``tests/data/cli_help.json`` records, for every command and sub-command, its
help text and each option's names, help text (whitespace normalised), default, whether it is
required and whether it is a flag. The options are read from Click's objects behind the Typer app, so
the result does not depend on the terminal width. A deliberate change of the CLI updates the
snapshot with ``python tests/test_cli_help.py --update`` (and the change shows in the diff).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import typer.main
from typer.testing import CliRunner

SNAPSHOT = Path(__file__).parent / "data" / "cli_help.json"


def _normalise(text: str | None) -> str:
    """Help text without its line wrapping: runs of whitespace become one space."""
    if not text:
        return ""
    # Click cuts a docstring at a form feed: what follows is not shown by --help.
    text = text.split("\f", 1)[0]
    return re.sub(r"\s+", " ", text).strip()


def _params(command: Any) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        kind = getattr(param, "param_type_name", type(param).__name__)
        options[param.name] = {
            "kind": kind,
            "opts": list(param.opts),
            "secondary_opts": list(param.secondary_opts),
            "help": _normalise(getattr(param, "help", None)),
            "required": bool(param.required),
            "is_flag": bool(getattr(param, "is_flag", False)),
            # --help shows it as [default: ...]; every default here is a JSON value.
            "default": param.default,
        }
    return options


def cli_description() -> dict[str, dict[str, Any]]:
    """Every command path (``"mipo train"``, ``"mipo lab toy-mio"``) -> its help and options."""
    from cli import app

    root = typer.main.get_command(app)
    found: dict[str, dict[str, Any]] = {}

    def walk(command: Any, path: list[str]) -> None:
        found[" ".join(path)] = {
            "help": _normalise(command.help),
            "options": _params(command),
        }
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                walk(sub, [*path, name])

    walk(root, ["mipo"])
    return found


def test_snapshot_is_present_and_covers_the_cli():
    snapshot = json.loads(SNAPSHOT.read_text())
    # The snapshot is not empty and holds the stage commands with their options.
    for name in ("mipo ingest", "mipo generate", "mipo judge", "mipo train", "mipo eval"):
        assert snapshot[name]["options"], name
    assert len(snapshot) >= 15


def test_every_command_keeps_its_options_and_help_text():
    snapshot = json.loads(SNAPSHOT.read_text())
    current = cli_description()
    assert sorted(current) == sorted(snapshot), "commands added or removed"
    problems: list[str] = []
    for path, before in snapshot.items():
        now = current[path]
        if now["help"] != before["help"]:
            problems.append(f"{path}: help text changed: {before['help']!r} -> {now['help']!r}")
        missing = sorted(set(before["options"]) - set(now["options"]))
        added = sorted(set(now["options"]) - set(before["options"]))
        if missing:
            problems.append(f"{path}: options removed: {missing}")
        if added:
            problems.append(f"{path}: options added: {added}")
        for name in sorted(set(before["options"]) & set(now["options"])):
            if now["options"][name] != before["options"][name]:
                problems.append(
                    f"{path} {name}: {before['options'][name]} -> {now['options'][name]}"
                )
    assert not problems, "\n".join(problems)


def test_rendered_help_lists_every_option():
    """The rendered ``--help`` shows each option name (on a wide terminal: a narrow one may
    shorten long names with an ellipsis)."""
    from cli import app

    snapshot = json.loads(SNAPSHOT.read_text())
    runner = CliRunner()
    for path, entry in snapshot.items():
        args = [*path.split()[1:], "--help"]
        result = runner.invoke(app, args, env={"COLUMNS": "250", "TERM": "dumb"})
        assert result.exit_code == 0, (path, result.output)
        for name, option in entry["options"].items():
            if option["kind"] == "argument":
                continue
            assert option["opts"][0] in result.output, (path, name)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_cli_help.py --update")
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(cli_description(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {SNAPSHOT}")
