"""The package's layering, read from its imports.

The layers run CLI (``cli.py``, ``commands/``) -> ``stages/`` -> domain modules ->
``artifacts/``. Read with ``ast`` (imports inside functions and ``importlib.import_module``
calls with a literal name included), the imports of ``mipo_engine/`` must not:

- import a stage module from outside ``stages/``, ``commands/`` and ``pipeline/``;
- import one stage module from another;
- import the CLI (``cli.py`` or ``mipo_engine.cli``);
- import ``commands/`` from outside it (the library builds commands from the stage registry,
  never from the CLI's own code);
- import ``training/`` from ``backends/``.

The tests also hold the test suite to one rule: an import error of the project's own code is a
failure, never a skip.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "mipo_engine"
TESTS = REPO_ROOT / "tests"

# Top-level names of the project's own code.
PROJECT_ROOTS = ("mipo_engine", "cli", "tests")
# Packages whose modules may import stages: the CLI side and the pipeline runner.
MAY_IMPORT_STAGES = ("mipo_engine.stages", "mipo_engine.commands", "mipo_engine.pipeline")


@dataclass(frozen=True)
class Import:
    file: str  # path relative to the repository root
    line: int
    importer: str  # dotted name of the importing module
    module: str  # dotted name of what is imported (a module, or a name inside one)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} -> {self.module}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_module(dotted: str) -> bool:
    path = REPO_ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every module ``path`` imports, wherever the import statement stands."""
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    file = str(path.relative_to(REPO_ROOT))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(file, node.lineno, importer, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(importer, is_package, node.level, node.module)
            else:
                base = node.module or ""
            for alias in node.names:
                # `from package import module` imports the module itself.
                target = f"{base}.{alias.name}"
                found.append(
                    Import(file, node.lineno, importer, target if _is_module(target) else base)
                )
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (
                called in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append(Import(file, node.lineno, importer, node.args[0].value))
    # One entry per (line, module): `from m import a, b` names the module once.
    return list(dict.fromkeys(found))


def package_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _stage_module(name: str) -> str | None:
    """The stage module ``name`` lies in (``mipo_engine.stages.judge``), or None."""
    parts = name.split(".")
    if parts[:2] != ["mipo_engine", "stages"] or len(parts) < 3:
        return None
    return ".".join(parts[:3])


def layering_violations(imports: list[Import]) -> dict[str, list[Import]]:
    rules: dict[str, list[Import]] = {
        "a module outside stages/, commands/, pipeline/ imports a stage": [],
        "a stage imports another stage": [],
        "a module imports the CLI": [],
        "a module outside commands/ imports commands/": [],
        "backends/ imports training/": [],
    }
    for found in imports:
        target_stage = _stage_module(found.module)
        own_stage = _stage_module(found.importer)
        if target_stage and not any(_within(found.importer, p) for p in MAY_IMPORT_STAGES):
            rules["a module outside stages/, commands/, pipeline/ imports a stage"].append(found)
        if target_stage and own_stage and target_stage != own_stage:
            rules["a stage imports another stage"].append(found)
        if _within(found.module, "cli") or _within(found.module, "mipo_engine.cli"):
            rules["a module imports the CLI"].append(found)
        if _within(found.module, "mipo_engine.commands") and not _within(
            found.importer, "mipo_engine.commands"
        ):
            rules["a module outside commands/ imports commands/"].append(found)
        if _within(found.importer, "mipo_engine.backends") and _within(
            found.module, "mipo_engine.training"
        ):
            rules["backends/ imports training/"].append(found)
    return rules


def _report(rules: dict[str, list[Import]]) -> str:
    lines = []
    for rule, found in rules.items():
        if found:
            lines.append(f"{rule} ({len(found)}):")
            lines.extend(f"  {item}" for item in found)
    return "\n".join(lines)


def test_the_import_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The reader finds top-level, in-function, relative and ``import_module`` imports."""
    package = tmp_path / "mipo_engine"
    (package / "stages").mkdir(parents=True)
    (package / "backends").mkdir()
    (package / "training").mkdir()
    (package / "commands").mkdir()
    (package / "pipeline").mkdir()
    for init in ("", "stages", "backends", "training", "commands", "pipeline"):
        (package / init / "__init__.py").write_text("")
    (package / "stages" / "judge.py").write_text("")
    (package / "stages" / "export.py").write_text(
        "def run():\n    from mipo_engine.stages import judge\n"
    )
    (package / "training" / "logps.py").write_text("")
    (package / "commands" / "train.py").write_text("from mipo_engine.commands import eval\n")
    (package / "commands" / "eval.py").write_text("")
    (package / "pipeline" / "stages.py").write_text(
        "def command():\n    import mipo_engine.commands.train\n"
    )
    (package / "backends" / "hf.py").write_text("from ..training.logps import x\n")
    (package / "strategies.py").write_text(
        "import importlib\n\n"
        "def f():\n    importlib.import_module('mipo_engine.stages.judge')\n"
        "    import cli\n"
    )
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    found = [item for path in sorted(package.rglob("*.py")) for item in imports_of(path)]
    rules = layering_violations(found)
    assert [str(i) for i in rules["a stage imports another stage"]] == [
        "mipo_engine/stages/export.py:2 -> mipo_engine.stages.judge"
    ]
    assert [str(i) for i in rules["backends/ imports training/"]] == [
        "mipo_engine/backends/hf.py:1 -> mipo_engine.training.logps"
    ]
    assert [str(i) for i in rules["a module imports the CLI"]] == [
        "mipo_engine/strategies.py:5 -> cli"
    ]
    assert [
        str(i) for i in rules["a module outside stages/, commands/, pipeline/ imports a stage"]
    ] == ["mipo_engine/strategies.py:4 -> mipo_engine.stages.judge"]
    assert [str(i) for i in rules["a module outside commands/ imports commands/"]] == [
        "mipo_engine/pipeline/stages.py:2 -> mipo_engine.commands.train"
    ]


def test_imports_follow_the_layers():
    imports = package_imports()
    assert len(imports) > 100  # the reader saw the package
    rules = layering_violations(imports)
    found = _report(rules)
    assert not found, "imports against the layering (file:line -> module):\n" + found


# --------------------------------------------------------------------------------------------
# The test suite: an import error of the project's own code fails, never skips
# --------------------------------------------------------------------------------------------


def _is_project_module(name: str) -> bool:
    return any(_within(name, root) for root in PROJECT_ROOTS)


def _imports_project_code(nodes: list[ast.stmt]) -> bool:
    for node in nodes:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import) and any(
                _is_project_module(a.name) for a in inner.names
            ):
                return True
            if isinstance(inner, ast.ImportFrom) and (
                inner.level or _is_project_module(inner.module or "")
            ):
                return True
    return False


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        getattr(n, "id", getattr(n, "attr", "")) in ("ImportError", "ModuleNotFoundError")
        for n in names
    )


def skipped_project_imports(path: Path) -> list[str]:
    file = str(path.relative_to(REPO_ROOT))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "importorskip" and node.args:
                first = node.args[0]
                if not isinstance(first, ast.Constant) or _is_project_module(str(first.value)):
                    found.append(f"{file}:{node.lineno} importorskip({ast.unparse(first)})")
        elif (
            isinstance(node, ast.Try)
            and _imports_project_code(node.body)
            and any(_catches_import_error(h) for h in node.handlers)
        ):
            found.append(f"{file}:{node.lineno} try: import ... except ImportError")
    return sorted(found, key=lambda item: int(item.split(":")[1].split()[0]))


def test_no_test_turns_an_import_error_of_the_project_into_a_skip():
    found = [item for path in sorted(TESTS.rglob("*.py")) for item in skipped_project_imports(path)]
    assert not found, "project imports guarded by a skip:\n" + "\n".join(found)


def test_the_skip_reader_sees_both_forms(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import pytest\n"
        "train = pytest.importorskip('mipo_engine.stages.train')\n"
        "vllm = pytest.importorskip('vllm')\n"
        "try:\n    from tests.helpers.vllm_server import vllm_server\n"
        "except ImportError:\n    pytest.skip('no helper')\n"
        "try:\n    import vllm\nexcept ImportError:\n    vllm = None\n"
    )
    assert skipped_project_imports(sample) == [
        "test_sample.py:2 importorskip('mipo_engine.stages.train')",
        "test_sample.py:4 try: import ... except ImportError",
    ]
