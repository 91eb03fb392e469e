"""Command-line options declared once, on a stage's settings class, and commands built from them.

Every field of a settings class (a pydantic model) is an option of its command: the field's
``description`` is the option's help text, its default the option's default, its type the
option's type. A ``Cli`` marker in the field's ``Annotated`` type says what the field name alone
cannot: short flags (``-o``), another parameter name, a positional argument, a list written as
one comma-separated value, or a setting that config files may give but the CLI does not offer.
An inherited field may get a stage's own wording through the class's ``option_help``.

Choices are not checked by Click: a value outside a ``Literal`` reaches the settings class, whose
error names the option (``config key 'strategy': Input should be ...``, exit code 2), the same
message a pipeline YAML gets. Typer is imported only when a command is built, so settings
modules can import ``Cli`` without it.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True, init=False)
class Cli:
    """How a settings field appears on the command line, where its name and type do not say.

    ``names``: the option's flags (``"--out", "-o"``; ``"--drop-empty/--keep-empty"``); default
    ``--field-name`` (``--x/--no-x`` for a bool). ``param``: the parameter name when it differs
    from the setting's (``file_format`` for ``format``). ``argument``: positional. ``comma``: a
    list given as one comma-separated value (items stripped, empty ones dropped). ``text``: the CLI passes the text as written and the
    settings class parses it; ``default`` is then the text shown as default. ``hidden``: a
    setting of config files only.
    """

    names: tuple[str, ...] = ()
    param: str | None = None
    argument: bool = False
    comma: bool = False
    text: bool = False
    default: Any = PydanticUndefined
    hidden: bool = False

    def __init__(
        self,
        *names: str,
        param: str | None = None,
        argument: bool = False,
        comma: bool = False,
        text: bool = False,
        default: Any = PydanticUndefined,
        hidden: bool = False,
    ) -> None:
        for key, value in (
            ("names", tuple(names)),
            ("param", param),
            ("argument", argument),
            ("comma", comma),
            ("text", text),
            ("default", default),
            ("hidden", hidden),
        ):
            object.__setattr__(self, key, value)


NO_CLI = Cli()

MODEL_HELP = (
    "Model: a name from `mipo models`, a .gguf file, a folder or a Hub id; "
    "default: smollm2-135m-instruct."
)


def or_list(names: typing.Iterable[str]) -> str:
    """``a, b or c``: choices as help text says them."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class OptionSpec:
    """One command-line parameter of a settings field."""

    field: str  # the settings field
    key: str  # the name the settings class is given (``option_name``: chunk_pairs, format)
    param: str  # the Python parameter name Click reports
    annotation: Any  # the type Typer parses
    default: Any  # PydanticUndefined: required
    help: str
    cli: Cli

    def value(self, given: Any) -> Any:
        """The setting from the parsed CLI value."""
        if self.cli.comma and isinstance(given, str):
            return [part.strip() for part in given.split(",") if part.strip()]
        if isinstance(given, list | tuple) and not self.cli.argument and not given:
            return None  # a repeatable option given no times
        return given


def _marker(info: FieldInfo) -> Cli:
    return next((item for item in info.metadata if isinstance(item, Cli)), NO_CLI)


def _own_first(config: type[BaseModel]) -> Iterator[str]:
    """Field names, the class's own first, then each base's: the inputs and output lead."""
    seen: set[str] = set()
    for klass in config.__mro__:
        for name in getattr(klass, "__annotations__", {}):
            if name in config.model_fields and name not in seen:
                seen.add(name)
                yield name


def _bare(annotation: Any) -> Any:
    """The type inside ``Annotated[...]`` (validators and markers are the settings' job)."""
    return (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed); a local path or URL
    (``Path | str``, ``artifacts.location.Location``) is parsed as a path."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [_bare(arg) for arg in args if arg is not type(None)]
        if len(rest) == 1 and typing.get_origin(rest[0]) in (typing.Union, types.UnionType):
            rest = list(typing.get_args(rest[0]))  # Optional[Location]: Path | str | None
        optional = len(rest) < len(args)
        if set(rest) == {Path, str}:
            return Path, optional
        if len(rest) == 1 and optional:
            return rest[0], True
    return annotation, False


def _cli_type(field: str, annotation: Any, cli: Cli) -> Any:
    """The type Typer parses for a field (choices are checked by the settings class)."""
    inner, optional = _split_optional(annotation)
    if cli.comma or cli.text:
        base: Any = str
    elif typing.get_origin(inner) is Literal:
        base = str
    elif inner in (str, int, float, bool, Path):
        base = inner
    elif typing.get_origin(inner) in (list, tuple):
        (item, *rest) = typing.get_args(inner)
        item = str if typing.get_origin(item) is Literal else item
        if item not in (str, int, float, Path) or (rest and rest != [Ellipsis]):
            raise TypeError(f"setting {field!r}: no command-line form for {annotation!r}")
        base = list[item]
    else:
        raise TypeError(
            f"setting {field!r}: no command-line form for {annotation!r}; "
            "mark it Cli(text=True) or Cli(hidden=True)"
        )
    return base | None if optional else base


def _default(info: FieldInfo, cli: Cli) -> Any:
    if cli.default is not PydanticUndefined:
        return cli.default
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if cli.comma and isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, tuple):
        return list(value)
    return value


def option_specs(
    config: type[BaseModel], *, optional: frozenset[str] = frozenset()
) -> list[OptionSpec]:
    """The command-line parameters of ``config``: one per field not marked hidden.

    ``optional``: fields the command accepts missing although the settings require them (the
    command then checks them itself, as ``eval --compare`` does).
    """
    helps: Mapping[str, str] = getattr(config, "option_help", {})
    option_name = getattr(config, "option_name", lambda field: field)
    specs = []
    for field in _own_first(config):
        info = config.model_fields[field]
        cli = _marker(info)
        if cli.hidden:
            continue
        key = option_name(field) or field
        annotation = _cli_type(field, info.annotation, cli)
        default = _default(info, cli)
        if field in optional and default is PydanticUndefined:
            annotation, default = annotation | None, None
        specs.append(
            OptionSpec(
                field=field,
                key=key,
                param=cli.param or key,
                annotation=annotation,
                default=default,
                help=helps.get(field, info.description or ""),
                cli=cli,
            )
        )
    return specs


def _typer_marker(spec: OptionSpec) -> Any:
    import typer

    inner, _ = _split_optional(spec.annotation)
    if spec.cli.argument:
        return typer.Argument(help=spec.help, show_default=False)
    names = list(spec.cli.names)
    show_default = True
    if inner is bool and spec.default is None:
        names = names or [f"--{spec.param.replace('_', '-')}/--no-{spec.param.replace('_', '-')}"]
        show_default = False  # unset: the settings class decides
    return typer.Option(*names, help=spec.help, show_default=show_default)


def command_function(
    specs: list[OptionSpec],
    action: Callable[..., Any],
    *,
    extra: list[OptionSpec] = (),  # type: ignore[assignment]
    doc: str | None = None,
) -> Callable[..., Any]:
    """A function Typer turns into a command: its parameters are ``specs`` and ``extra``. It
    calls ``action(settings, **extras)``: the settings by the names the settings class takes,
    the extra options by their parameter names."""
    parameters = []
    for spec in [*specs, *extra]:
        annotated = typing.Annotated[spec.annotation, _typer_marker(spec)]
        default = inspect.Parameter.empty if spec.default is PydanticUndefined else spec.default
        parameters.append(
            inspect.Parameter(
                spec.param, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotated
            )
        )
    # Positional arguments keep their order before the options, as Click lists them.
    parameters.sort(key=lambda p: not _is_argument(p))
    by_param = {spec.param: spec for spec in specs}
    extra_by_param = {spec.param: spec for spec in extra}

    def command(**values: Any) -> Any:
        settings = {
            by_param[name].key: by_param[name].value(value)
            for name, value in values.items()
            if name in by_param
        }
        extras = {
            name: extra_by_param[name].value(value)
            for name, value in values.items()
            if name in extra_by_param
        }
        return action(settings, **extras)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__doc__ = doc
    return command


def _is_argument(parameter: inspect.Parameter) -> bool:
    import typer

    metadata = getattr(parameter.annotation, "__metadata__", ())
    return any(isinstance(item, typer.models.ArgumentInfo) for item in metadata)


def build_command(
    name: str,
    help: str,
    config: type[BaseModel],
    action: Callable[..., Any],
    *,
    extra: type[BaseModel] | None = None,
    optional: frozenset[str] = frozenset(),
) -> Any:
    """The Click command ``name``: one option per field of ``config``, then of ``extra`` (a
    command's own options, such as those of ``eval --compare``)."""
    import typer
    import typer.main

    function = command_function(
        option_specs(config, optional=optional),
        action,
        extra=option_specs(extra) if extra is not None else [],
        doc=help,
    )
    app = typer.Typer(add_completion=False)
    app.command(name, help=help)(function)
    return typer.main.get_command(app)
