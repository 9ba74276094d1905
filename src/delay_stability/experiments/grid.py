"""One grid engine: a base training spec expanded over named axes into run folders, and the
finished run folders collected into tidy tables (``delay-stability grid-collect``).

A grid run is named by its axis values in the order given, one folder level per axis, e.g.
``tau8/lr0.05/seed0`` (see ``value_tag``). ``expand`` takes the product of the axes (first axis
outermost), ``expand_named`` a list of explicit points. ``collect`` reads each run folder's
summary.json and metrics.csv (written by ``train.run_training``) into two tables:

summary   one row per run: the axis values, then SUMMARY_COLUMNS
metrics   one row per run and metrics.csv row: the axis values, then every metrics.csv column,
          kept as the CSV strings so they write back bit for bit (a metrics column named like an
          axis, e.g. ``lr``, is written as ``metrics_lr``; the axis column keeps its name)

This module imports no torch, numpy or matplotlib: expanding a grid and collecting its tables
take milliseconds.
"""

from __future__ import annotations

import copy
import csv
import itertools
import os
import re
from dataclasses import dataclass

from .. import files
from ..errors import UserError
from ..spec import check_spec, copy_tree, deep_merge

#: Grid axis name -> the spec key path it sets.
AXES = {
    "tau": "optimizer.delay",
    "lr": "lr",
    "seed": "seed",
    "variant": "optimizer.variant",
    "momentum": "optimizer.momentum",
    "workers": "optimizer.workers",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "weight_decay": "optimizer.weight_decay",
    "schedule": "optimizer.schedule",
}

#: Columns of the summary table, after the axis columns.
SUMMARY_COLUMNS = (
    "run", "status", "epochs_run", "steps", "diverged", "escaped", "epochs_to_escape",
    "final_train_loss", "final_train_error", "final_val_loss", "final_val_error", "seconds",
)

_TAG_TEXT = re.compile(r"[A-Za-z0-9._+-]+")


def value_tag(value) -> str:
    """A stable, readable folder-name fragment for an axis value.

    Args:
        value: an int, float, bool, None, string, list, or dict (a delay distribution).

    Returns:
        ints as is; floats by ``format(v, "g")`` (0.05 -> "0.05", 1e-05 -> "1e-05", 2.0 -> "2");
        bools as true/false; None as none; strings as is (they must match [A-Za-z0-9._+-]+);
        lists as their items' tags joined by "-"; dicts as the tag of ``kind`` (if any) then the
        tags of the other values sorted by key, joined by "-" ({kind: gaussian, mean: 8} ->
        "gaussian-8"). Anything else is a UserError.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, str):
        if not _TAG_TEXT.fullmatch(value):
            raise UserError(f"grid value {value!r}: a name may hold only letters, digits and . _ + -")
        return value
    if isinstance(value, (list, tuple)) and value:
        return "-".join(value_tag(v) for v in value)
    if isinstance(value, dict) and value:
        keys = sorted((k for k in value if k != "kind"), key=str)
        parts = ([value["kind"]] if "kind" in value else []) + [value[k] for k in keys]
        return "-".join(value_tag(v) for v in parts)
    raise UserError(f"grid value {value!r}: cannot name a run folder after it")


@dataclass(frozen=True)
class GridRun:
    """One run of a grid.

    Attributes:
        name: its folder relative to the grid's root, e.g. "tau8/lr0.05/seed0" (axis order as given).
        axes: axis name -> value, in axis order.
        spec: the merged training spec (base, overrides, then the axis values).
    """

    name: str
    axes: dict
    spec: dict

    def folder(self, root) -> str:
        """The run's folder under ``root``: ``root/name``."""
        return os.path.join(os.fspath(root), self.name)


def _key_path(axis: str) -> str:
    if axis not in AXES:
        raise UserError(f"unknown grid axis {axis!r} (choose {', '.join(AXES)})")
    return AXES[axis]


def _run(merged: dict, point: dict, validate: bool) -> GridRun:
    """The GridRun of one point (axis -> value): its name, and a copy of the spec ``merged``
    (the base with the overrides) with the values set."""
    name = "/".join(f"{axis}{value_tag(value)}" for axis, value in point.items())
    spec = copy_tree(merged)
    for axis, value in point.items():
        node = spec
        *parents, last = _key_path(axis).split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = copy.deepcopy(value)
    if validate:
        try:
            check_spec(spec)
        except UserError as exc:
            raise UserError(f"grid run {name}: {exc}") from None
    return GridRun(name=name, axes=dict(point), spec=spec)


def expand(base: dict, axes: dict, *, overrides: dict | None = None, validate: bool = True) -> list[GridRun]:
    """The product of the grid's axes, as runs.

    Args:
        base: the base training spec (not modified).
        axes: axis name (a key of AXES) -> list of values; the product is taken in this order,
            the first axis outermost.
        overrides: spec keys merged into ``base`` (``deep_merge``) before the axis values are set.
        validate: check each run's spec with ``validate_spec``; a mistake is a UserError
            "grid run NAME: spec key ...".

    Returns:
        One GridRun per point of the product, in order. An unknown axis, an empty axis, a value
        given twice in one axis, or two values with the same tag are UserErrors.
    """
    for axis, values in axes.items():
        _key_path(axis)
        values = list(values)
        if not values:
            raise UserError(f"grid axis {axis!r} is empty")
        for i, a in enumerate(values):
            for b in values[i + 1:]:
                if a == b:
                    raise UserError(f"grid axis {axis!r}: value {a!r} is given twice")
                if value_tag(a) == value_tag(b):
                    raise UserError(f"grid axis {axis!r}: values {a!r} and {b!r} would share the "
                                    f"folder name {axis}{value_tag(a)}")
    names = list(axes)
    merged = copy.deepcopy(deep_merge(base, overrides))
    return [_run(merged, dict(zip(names, combo)), validate)
            for combo in itertools.product(*(list(axes[n]) for n in names))]


def expand_named(base: dict, points: list, *, overrides: dict | None = None, validate: bool = True) -> list[GridRun]:
    """A grid given as explicit points rather than a product.

    Args:
        base: the base training spec (not modified).
        points: a list of dicts axis name -> value, all with the same axes; run names follow the
            order of the first point's keys.
        overrides: spec keys merged into ``base`` before the axis values are set.
        validate: check each run's spec with ``validate_spec`` (as in ``expand``).

    Returns:
        One GridRun per point, in order. No points, points with other axes than the first's, a
        point given twice, or two points with the same name are UserErrors.
    """
    points = list(points)
    if not points:
        raise UserError("grid has no points")
    order = list(points[0])
    merged = copy.deepcopy(deep_merge(base, overrides))
    runs, by_name = [], {}
    for i, point in enumerate(points):
        if not isinstance(point, dict) or set(point) != set(order):
            raise UserError(f"grid point {i} {point!r}: expected the axes {', '.join(order)}")
        run = _run(merged, {axis: point[axis] for axis in order}, validate)
        other = by_name.get(run.name)
        if other is not None:
            what = "is given twice" if other.axes == run.axes else f"has the name of {other.axes!r}"
            raise UserError(f"grid point {point!r} {what} ({run.name})")
        by_name[run.name] = run
        runs.append(run)
    return runs


# ================================================================ collecting


def _cell(value):
    """An axis value as a table cell (a delay distribution by its tag)."""
    return value_tag(value) if isinstance(value, (dict, list, tuple)) else value


def _header(path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh), [])


def _gather(items):
    """(summary rows, metrics rows, metrics columns) of (folder, axes) pairs."""
    summaries, metrics, columns = [], [], None
    for folder, axes in items:
        cells = {axis: _cell(value) for axis, value in axes.items()}
        summary = files.read_json(os.path.join(folder, "summary.json"), "summary.json")
        if not isinstance(summary, dict):
            raise UserError(f"summary.json {os.path.join(folder, 'summary.json')}: expected a JSON object")
        final = summary.get("final") or {}
        summaries.append({
            **cells, "run": folder,
            **{c: summary.get(c) for c in ("status", "epochs_run", "steps", "diverged", "escaped",
                                           "epochs_to_escape")},
            **{f"final_{c}": final.get(c) for c in ("train_loss", "train_error", "val_loss", "val_error")},
            "seconds": final.get("seconds"),
        })
        path = os.path.join(folder, "metrics.csv")
        rows = files.read_csv(path, "metrics.csv")
        header = _header(path)
        if columns is None:
            columns = header
        elif header != columns:
            raise UserError(f"metrics.csv {path}: columns {', '.join(header)} differ from the first "
                            f"run's ({', '.join(columns)})")
        for row in rows:
            metrics.append({**cells, **{(f"metrics_{c}" if c in cells else c): v for c, v in row.items()}})
    return summaries, metrics, columns or []


def collect(runs, root) -> tuple[list[dict], list[dict]]:
    """The tidy tables of a grid's finished runs.

    Args:
        runs: GridRuns (from ``expand`` or ``expand_named``).
        root: the folder the grid's run folders are in.

    Returns:
        (summary_rows, metrics_rows): one summary row per run (axis values, then SUMMARY_COLUMNS;
        ``run`` is the run's folder), and one metrics row per run and metrics.csv row (axis values,
        then the metrics.csv columns as strings). A diverged run is a row like any other; a
        missing summary.json or metrics.csv is a UserError naming it.
    """
    summaries, metrics, _ = _gather((run.folder(root), run.axes) for run in runs)
    return summaries, metrics


def _write(axis_names, gathered, summary_csv, metrics_csv) -> None:
    summaries, metrics, columns = gathered
    if not summaries:
        raise UserError("grid-collect: no runs to collect")
    files.write_csv(summary_csv, [*axis_names, *SUMMARY_COLUMNS], summaries)
    files.write_csv(metrics_csv, [*axis_names, *(f"metrics_{c}" if c in axis_names else c for c in columns)],
                    metrics)


def write_tables(runs, root, summary_csv, metrics_csv) -> None:
    """Write the grid's summary and metrics tables (see ``collect``) as CSV, atomically.

    Args:
        runs: GridRuns, all with the same axes (at least one run).
        root: the folder the grid's run folders are in.
        summary_csv: path of the summary table: columns the axes, then SUMMARY_COLUMNS.
        metrics_csv: path of the metrics table: columns the axes, then the metrics.csv columns of
            the first run (every run's must agree, else a UserError naming the file).
    """
    runs = list(runs)
    axis_names = list(runs[0].axes) if runs else []
    _write(axis_names, _gather((run.folder(root), run.axes) for run in runs), summary_csv, metrics_csv)


def _folder_axes(folders, axis_names):
    """(folder, axes) pairs, the axis values read from each folder's run.json spec."""
    paths = [_key_path(axis) for axis in axis_names]
    for folder in folders:
        path = os.path.join(folder, "run.json")
        record = files.read_json(path, "run.json")
        spec = record.get("spec") if isinstance(record, dict) else None
        if not isinstance(spec, dict):
            raise UserError(f"run.json {path}: no spec")
        axes = {}
        for axis, key_path in zip(axis_names, paths):
            node = spec
            for part in key_path.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise UserError(f"run.json {path}: the spec has no key '{key_path}' (axis {axis})")
                node = node[part]
            axes[axis] = node
        yield folder, axes


def collect_folders(folders, axis_names) -> tuple[list[dict], list[dict]]:
    """The tidy tables of run folders, the axis values read from each one's run.json spec.

    Args:
        folders: run folders written by ``train.run_training``.
        axis_names: axis names (keys of AXES): the axis columns, in order.

    Returns:
        (summary_rows, metrics_rows), as ``collect``.
    """
    summaries, metrics, _ = _gather(_folder_axes(folders, list(axis_names)))
    return summaries, metrics


# ================================================================ command line


def _cli_collect(args) -> int:
    axis_names = list(args.axis)
    gathered = _gather(_folder_axes(args.run, axis_names))
    _write(axis_names, gathered, args.summary, args.metrics)
    print(f"{args.summary}: {len(gathered[0])} runs; {args.metrics}: {len(gathered[1])} rows")
    return 0


def register(subparsers) -> None:
    """Add the ``grid-collect`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "grid-collect",
        help="tidy tables of the run folders of a grid",
        description="Collect finished run folders (summary.json, metrics.csv, run.json) into a "
        "summary table (one row per run) and a metrics table (one row per run and evaluation epoch); "
        "the axis columns are read from each run's spec.",
    )
    p.add_argument("--run", nargs="+", required=True, metavar="DIR", help="run folders")
    p.add_argument("--axis", action="append", default=[], metavar="NAME",
                   help=f"an axis column, read from each run's spec (repeatable; {', '.join(AXES)})")
    p.add_argument("--summary", required=True, metavar="CSV", help="summary table to write")
    p.add_argument("--metrics", required=True, metavar="CSV", help="metrics table to write")
    p.set_defaults(func=_cli_collect)
