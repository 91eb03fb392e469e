"""The package's layers, read from its imports (ast): stages sit above the modules they use.

A stage (a module in ``mipo_engine/stages/``) may be imported only by the layers above it
(``commands/``, ``pipeline/``, ``cli.py``), never by another stage or by a module below it.
What two stages share lives below them (``artifacts/``, ``modelcalls/``, ``judging/``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mipo_engine"
ABOVE_STAGES = ("mipo_engine.commands", "mipo_engine.pipeline")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` (module ``module``) imports, lazy imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _stage_of(module: str) -> str | None:
    """The stage ``module`` names (``mipo_engine.stages.<stage>``), or None."""
    parts = module.split(".")
    if parts[:2] == ["mipo_engine", "stages"] and len(parts) >= 3:
        return ".".join(parts[:3])
    return None


def wrong_way_imports(package: Path = PACKAGE) -> list[str]:
    """``importer -> stage`` for every import of a stage from below or from another stage."""
    found = []
    for path in sorted(package.rglob("*.py")):
        importer = _module_name(path, package.parent)
        if importer.startswith(ABOVE_STAGES):
            continue
        own_stage = _stage_of(importer)
        for target in sorted(_imports(path, importer)):
            stage = _stage_of(target)
            if stage is not None and stage != own_stage:
                found.append(f"{importer} -> {stage}")
    return sorted(set(found))


def test_no_stage_is_imported_from_below_or_by_another_stage() -> None:
    assert wrong_way_imports() == []


def test_the_check_sees_imports_of_every_kind(tmp_path: Path) -> None:
    """A lazy import, an aliased one and a stage importing a stage are all reported."""
    package = tmp_path / "mipo_engine"
    (package / "stages").mkdir(parents=True)
    (package / "evaluation").mkdir()
    (package / "commands").mkdir()
    for folder in (package, package / "stages", package / "evaluation", package / "commands"):
        (folder / "__init__.py").write_text("")
    (package / "stages" / "judge.py").write_text("X = 1\n")
    (package / "stages" / "export.py").write_text("from mipo_engine.stages.judge import X\n")
    (package / "evaluation" / "judged.py").write_text(
        "def f():\n    import mipo_engine.stages.judge as judge\n    return judge\n"
    )
    (package / "commands" / "judge.py").write_text("from mipo_engine.stages import judge\n")
    assert wrong_way_imports(package) == [
        "mipo_engine.evaluation.judged -> mipo_engine.stages.judge",
        "mipo_engine.stages.export -> mipo_engine.stages.judge",
    ]


@pytest.mark.parametrize(
    "module",
    ["mipo_engine.artifacts.pairs", "mipo_engine.stages.score", "mipo_engine.modelcalls.running"],
)
def test_scoring_and_pair_reading_do_not_import_torch(module: str) -> None:
    """Pair reading lives below training: importing it (or the score stage) needs no torch."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"
