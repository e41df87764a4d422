"""What commands print on stdout for scripts: one rule for every command.

- `--json` (or `--output json`) prints one JSON document, indented: an array for a list of
  things (`list-events`, `spool list`), an object for one thing (`send-once`, `stats`,
  `verify`).
- What streams (`tail --json`, `list-events --output ndjson`, `--follow`, `propagate
  --json-log`) prints one compact JSON object a line (NDJSON), flushed line by line.
- `--output csv` prints a header row, then a row a record.

JSON text keeps non-ASCII characters as they are, except the few a terminal would act on
(see eventctl.textsafe): the same JSON value, safe to print.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from eventctl.textsafe import json_text


def document(file: TextIO, value: Any) -> None:
    """One JSON document."""
    file.write(json_text(value, indent=2) + "\n")


def line(file: TextIO, value: Any) -> None:
    """One NDJSON line, flushed (a reader may be waiting for it)."""
    file.write(json_text(value) + "\n")
    file.flush()


def lines(file: TextIO, values: Iterable[Any]) -> None:
    for value in values:
        file.write(json_text(value) + "\n")
    file.flush()


def csv_rows(
    file: TextIO, rows: Iterable[Mapping[str, Any]], fields: Sequence[str], *, header: bool
) -> None:
    writer = csv.DictWriter(file, fieldnames=list(fields))
    if header:
        writer.writeheader()
    writer.writerows(rows)
