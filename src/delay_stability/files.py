"""Atomic writes of every file the pipeline leaves behind.

Each writer puts the content in a temporary file in the destination folder and renames it over
the destination (``os.replace``): readers never see a partial file, and a process killed halfway
leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import tempfile


def atomic_write(path, write, sync: bool = False) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it to ``path``;
    ``sync`` also flushes it to disk first (checkpoints)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path, what="file"):
    """A JSON file's content; a missing or malformed file is a UserError naming it."""
    from .errors import UserError

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc})") from None


def json_safe(value):
    """``value`` with non-finite floats replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path, record) -> None:
    """``record`` as indented JSON (non-finite floats as null), atomically."""
    text = json.dumps(json_safe(record), indent=2, default=float) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def csv_value(value) -> str:
    """A CSV cell: floats (numpy's too) by repr, so they read back bit for bit; None as empty."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return repr(float(value))
    return str(value)


def write_csv(path, columns, rows) -> None:
    """A tidy CSV: a header of ``columns``, then one line per row (a mapping), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_value(row.get(c)) for c in columns])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
