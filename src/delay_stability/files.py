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


#: What to do about a damaged result of the pipeline: the audit names the command that rebuilds it.
REBUILD_ADVICE = "`delay-stability audit` names the command that rebuilds it"


def read_csv(path, what="table", columns=None, advice=REBUILD_ADVICE) -> list[dict]:
    """A CSV file's rows as dicts of strings. A missing, unreadable or ragged file (a row with more
    or fewer cells than the header: a half-written or damaged table), or one without the
    ``columns`` asked for, is a UserError naming the file, what is wrong with it and ``advice``
    (for the pipeline's own results: how to rebuild it; for a user's file: what it must hold)."""
    from .errors import UserError

    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{what} {path} cannot be read ({exc}); {advice}") from None
    missing = [c for c in (columns or ()) if c not in header]
    if missing:
        has = f"its header is {', '.join(header)}" if header else "it is empty"
        raise UserError(f"{what} {path} has no column {', '.join(missing)} ({has}); {advice}")
    for i, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            cells = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
            raise UserError(f"{what} {path}: line {i} has {cells} cells, its header {len(header)} "
                            f"(a cut or damaged file); {advice}")
    return rows


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _strict_yaml_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently): ``scale: quick`` followed by ``scale: paper`` would switch the whole build."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line)
                    except TypeError:  # an unhashable key: SafeLoader reports it
                        continue
                    if first != key_node.start_mark.line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicated key '{key}' (first given on line {first + 1}); keep one",
                            key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)
    return StrictLoader


def yaml_error_message(path, exc) -> str:
    """One line for a YAML problem: ``FILE, line L, column C: what`` (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}{where}: {problem}" + (f" ({context})" if context and "duplicated" not in problem else "")


def load_yaml_text(text: str, path="<text>"):
    """YAML ``text`` parsed strictly (duplicated keys refused); UserError with file, line and column."""
    import yaml

    from .errors import UserError

    try:
        return yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise UserError(yaml_error_message(path, exc)) from None


def read_yaml(path, what="YAML file"):
    """A YAML file's content, parsed strictly (``load_yaml_text``); a missing or unreadable file is a
    UserError naming it."""
    from .errors import UserError

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read ({exc})") from None
    return load_yaml_text(text, path)


def parse_json_object(text, flag):
    """A JSON object given on the command line (``--options``, ``--search``, ...); UserError naming
    the flag if it is not valid JSON or not an object."""
    from .errors import UserError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a JSON object")
    return value


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


# ---------------------------------------------------------------------------------------------
# Code hashes: which source files of the package a computation depends on.
# Read from the sources with ``ast``; nothing hashed here is ever imported.


def _module_file(name, package_root):
    """``(exists, path)`` for the dotted module ``name`` under ``package_root``: ``x.py`` or
    ``x/__init__.py``; a folder without ``__init__.py`` (a namespace package) exists, with no file."""
    from pathlib import Path

    base = Path(package_root).joinpath(*name.split("."))
    if base.with_name(base.name + ".py").is_file():
        return True, base.with_name(base.name + ".py")
    if (base / "__init__.py").is_file():
        return True, base / "__init__.py"
    return base.is_dir(), None


_IMPORTS_CACHE: dict = {}

# ---------------------------------------------------------------- the code caches, kept between processes

#: Format of the cache file; another format is ignored (and rewritten).
CODE_CACHE_FORMAT = 1
_DISK = {"loaded": False, "dirty": False}


def code_cache_path() -> str | None:
    """Where the code and import caches are kept between processes (every Snakemake start and every
    training job hashes the same modules): ``$DELAY_STABILITY_CODE_CACHE`` if set (empty: none),
    else ``$XDG_CACHE_HOME/delay-stability/code-cache.json`` (``~/.cache`` by default). Entries are
    keyed, as within a process, by each file's path, size and modification time (ns), so an edited
    module is parsed again; a damaged or foreign file is ignored and rewritten."""
    path = os.environ.get("DELAY_STABILITY_CODE_CACHE")
    if path is not None:
        return path or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "delay-stability", "code-cache.json")


def _load_code_cache() -> None:
    """Fill the in-process caches from the file (once per process) and save them at exit."""
    if _DISK["loaded"]:
        return
    _DISK["loaded"] = True
    path = code_cache_path()
    if path is None:
        return
    import atexit

    atexit.register(_save_code_cache)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != CODE_CACHE_FORMAT:
            return
        for key, code in data["code"]:
            _CODE_CACHE.setdefault(tuple(key), code.encode())
        for key, mods in data["imports"]:
            _IMPORTS_CACHE.setdefault(tuple(key), frozenset(mods))
    except (OSError, ValueError, KeyError, TypeError):
        return


def _still_current(path: str, size: int, mtime_ns: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


def _save_code_cache() -> None:
    """Write the caches' entries whose files are unchanged (atomically; a failure costs only time)."""
    path = code_cache_path()
    if path is None or not _DISK["dirty"]:
        return
    code = [[list(k), v.decode()] for k, v in _CODE_CACHE.items() if _still_current(*k)]
    imports = [[list(k), sorted(v)] for k, v in _IMPORTS_CACHE.items() if _still_current(*k[1:4])]
    try:
        text = json.dumps({"format": CODE_CACHE_FORMAT, "code": code, "imports": imports})
        atomic_write(path, lambda f: f.write(text.encode()))
    except (OSError, TypeError, ValueError):
        pass


def _imported_modules(name, path, top, package_root):
    """The modules of package ``top`` that the source of module ``name`` (file ``path``) imports,
    lazy imports included; cached by file, size and mtime (a workflow hashes the same modules for
    hundreds of rules), within the process and between processes (``code_cache_path``)."""
    _load_code_cache()
    st = os.stat(path)
    key = (name, str(path), st.st_size, st.st_mtime_ns, top, str(package_root))
    if key not in _IMPORTS_CACHE:
        _IMPORTS_CACHE[key] = frozenset(_parse_imports(name, path, top, package_root))
        _DISK["dirty"] = True
    return set(_IMPORTS_CACHE[key])


def _parse_imports(name, path, top, package_root):
    import ast

    tree = ast.parse(path.read_bytes(), filename=str(path))
    parts = name.split(".")
    package = parts if path.name == "__init__.py" else parts[:-1]

    def exists(mod):
        return _module_file(mod, package_root)[0]

    def ours(mod):
        return mod == top or mod.startswith(top + ".")

    def require(mod, line):
        if not exists(mod):
            raise ValueError(f"module {mod!r} (imported by {name!r}, line {line}) does not exist")

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not ours(alias.name):
                    continue
                require(alias.name, node.lineno)
                # ``import pkg.sub`` runs (and binds) pkg too; the top package only when named itself.
                mods = alias.name.split(".")
                for i in range(1, len(mods) + 1):
                    prefix = ".".join(mods[:i])
                    if prefix != top or prefix == alias.name:
                        found.add(prefix)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package) - 1:
                    raise ValueError(
                        f"relative import beyond the top package in {name!r}, line {node.lineno}"
                    )
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                target = node.module
            if not ours(target):
                continue
            require(target, node.lineno)
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if n != "*" and exists(f"{target}.{n}")]
            found.update(f"{target}.{n}" for n in submodules)
            # pkg itself: a subpackage always (its __init__ runs), the top package only when a name
            # that is not a submodule comes from it (``from . import __version__``).
            if target != top or len(submodules) < len(names):
                found.add(target)
    return found


def module_dependencies(module, package_root) -> set:
    """The dotted names of the modules of ``module``'s package that ``module`` uses, transitively,
    itself included: every ``import``/``from ... import`` (relative ones too, and those inside
    functions) that names a module under ``package_root`` (the folder holding the top package).
    Standard-library and third-party imports are ignored; a named module that does not exist is a
    ValueError."""
    top = module.split(".")[0]
    if not _module_file(module, package_root)[0]:
        raise ValueError(f"module {module!r} does not exist under {package_root}")
    seen = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, package_root)[1]
        if path is not None:
            todo.extend(_imported_modules(name, path, top, package_root) - seen)
    return seen


def code_of(source: str) -> bytes:
    """The code of a module's source, without its comments, docstrings and layout: the dump of its
    syntax tree with every docstring (a string constant that opens a module, class or function
    body) removed. Two sources with the same code give the same bytes."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False).encode()


_CODE_CACHE: dict = {}


def _code_of_file(path) -> bytes:
    """``code_of`` a file, cached by path, size and modification time (within the process and
    between processes: ``code_cache_path``)."""
    _load_code_cache()
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CODE_CACHE:
        with open(path, encoding="utf-8") as f:
            _CODE_CACHE[key] = code_of(f.read())
        _DISK["dirty"] = True
    return _CODE_CACHE[key]


def code_hash(modules, package_root, length: int = 12, ignore=()) -> str:
    """A short hash of the code of ``modules`` (dotted names, or one name) and of every module of
    the package they use, transitively: sha256 over each module's name and its code (``code_of``:
    comments, docstrings and layout do not count), in sorted order, as hex truncated to ``length``.
    Modules named in ``ignore`` are left out (the package root, which holds only the version: the
    version is provenance, not code a job runs).

    Rules that compute take it as a parameter, so editing a module reruns exactly the jobs that use
    it, transitively, and nothing else; rewording a docstring or a comment reruns nothing."""
    import hashlib

    if isinstance(modules, str):
        modules = [modules]
    closure = set()
    for module in modules:
        closure |= module_dependencies(module, package_root)
    closure -= set(ignore)
    digest = hashlib.sha256()
    for name in sorted(closure):
        path = _module_file(name, package_root)[1]
        content = b"" if path is None else _code_of_file(path)
        for chunk in (name.encode(), content):
            digest.update(len(chunk).to_bytes(8, "big"))
            digest.update(chunk)
    return digest.hexdigest()[:length]
