"""Errors raised by the data layer: each names the place (file, row, column, key)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or a bad dataset description.

    The message always names where the problem is: the file, and where it applies the
    1-based row number as a person would count it in that file and the column.
    """

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.row = row
        self.column = column


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key (``section.key``)."""
