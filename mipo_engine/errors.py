"""Errors a user can act on.

Every error that reaches the CLI is a ``MipoError``: it carries an exit code and a message that
names the file, row and field (or config key) at fault and, where possible, the fix.
"""

from __future__ import annotations

from pathlib import Path


class MipoError(Exception):
    """Base class for errors shown to the user without a traceback."""

    exit_code = 1


class InputError(MipoError):
    """Bad input data: the message names the file, the 1-based row and the field."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.reason = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class ConfigError(MipoError):
    """A bad option or config value; the message names the option or key path."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


class BackendError(MipoError):
    """A model backend failed in a way retries cannot fix (bad model path, server down...)."""

    exit_code = 3
