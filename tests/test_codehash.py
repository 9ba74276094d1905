"""module_dependencies / code_hash: which package sources a computation depends on, read with ast."""

import ast
from pathlib import Path

import pytest

from delay_stability.files import code_hash, code_of, module_dependencies

SRC = Path(__file__).resolve().parents[1] / "src"


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def pkg(tmp_path):
    files = {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/a.py": "import os\nimport numpy as np\nfrom . import b\n",
        "pkg/b.py": "import json\n\ndef g():\n    from .c import f\n    return f()\n",
        "pkg/c.py": "from collections import OrderedDict\n\ndef f():\n    return 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "from .. import a\nfrom ..sub import e\n",
        "pkg/sub/e.py": "X = 1\n",
        "pkg/x.py": "from . import y\n",
        "pkg/y.py": "from .x import *\n",
        "pkg/v.py": "from . import __version__\n",
        "pkg/w.py": "import pkg.sub.e\n",
        "pkg/z.py": "from pkg.sub import e\nfrom pkg import c\n",
        "pkg/lonely.py": "import sys\n",
    }
    for rel, text in files.items():
        write(tmp_path, rel, text)
    return tmp_path


def test_dependency_sets(pkg):
    deps = lambda m: module_dependencies(m, pkg)  # noqa: E731
    assert deps("pkg.c") == {"pkg.c"}
    assert deps("pkg.b") == {"pkg.b", "pkg.c"}  # lazy import inside a function
    assert deps("pkg.a") == {"pkg.a", "pkg.b", "pkg.c"}  # stdlib/third party ignored
    assert deps("pkg.sub.d") == {"pkg.sub.d", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.e"}
    assert deps("pkg.x") == deps("pkg.y") == {"pkg.x", "pkg.y"}  # a cycle terminates
    assert deps("pkg.v") == {"pkg.v", "pkg"}  # a name from the top package's __init__
    assert deps("pkg.w") == {"pkg.w", "pkg.sub", "pkg.sub.e"}
    assert deps("pkg.z") == {"pkg.z", "pkg.sub", "pkg.sub.e", "pkg.c"}
    assert deps("pkg.sub") == {"pkg.sub"}  # a package's own __init__
    assert deps("pkg.lonely") == {"pkg.lonely"}


def test_missing_module(pkg):
    with pytest.raises(ValueError, match="pkg.nope"):
        module_dependencies("pkg.nope", pkg)
    write(pkg, "pkg/broken.py", "from .gone import f\n")
    with pytest.raises(ValueError, match="pkg.gone"):
        module_dependencies("pkg.broken", pkg)


def test_hash_follows_transitive_imports_only(pkg):
    before = code_hash(["pkg.a"], pkg)
    assert len(before) == 12 and code_hash("pkg.a", pkg) == before
    assert len(code_hash(["pkg.a"], pkg, length=20)) == 20
    write(pkg, "pkg/lonely.py", "import sys  # edited\n")  # unrelated module
    write(pkg, "pkg/sub/e.py", "X = 2\n")
    write(pkg, "pkg/__init__.py", "__version__ = '2'\n")  # nobody in a's closure imports it
    assert code_hash(["pkg.a"], pkg) == before
    write(pkg, "pkg/c.py", "def f():\n    return 2\n")  # imported lazily by b, imported by a
    after = code_hash(["pkg.a"], pkg)
    assert after != before
    assert code_hash(["pkg.a", "pkg.lonely"], pkg) != after


def test_package_layouts(tmp_path):
    write(tmp_path, "q/__init__.py", "")
    write(tmp_path, "q/m.py", "from .sub import thing\nfrom .flat import g\n")
    write(tmp_path, "q/sub/__init__.py", "thing = 1\n")
    write(tmp_path, "q/flat.py", "def g(): pass\n")
    assert module_dependencies("q.m", str(tmp_path)) == {"q.m", "q.sub", "q.flat"}


def _relative_imports(path):
    """Top-level modules named by ``from .x import`` in a file of the top package (read here)."""
    tree = ast.parse(path.read_text())
    return {
        f"delay_stability.{node.module.split('.')[0]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def test_real_package():
    assert module_dependencies("delay_stability.theory", SRC) == {"delay_stability.theory"}
    asgd = SRC / "delay_stability" / "asgd.py"
    assert "delay_stability.theory" in _relative_imports(asgd)
    deps = module_dependencies("delay_stability.asgd", SRC)
    assert {"delay_stability.asgd", "delay_stability.theory"} <= deps
    assert _relative_imports(asgd) <= deps


def test_comments_docstrings_and_layout_do_not_change_the_hash(pkg):
    before = code_hash("pkg.a", pkg)
    c = pkg / "pkg" / "c.py"  # imported lazily by b, which a imports
    c.write_text('"""A module docstring."""\n# a comment\nfrom collections import OrderedDict\n\n\n'
                 'def f():\n    """What f does."""\n    return   1  # one\n')
    assert code_hash("pkg.a", pkg) == before
    c.write_text("from collections import OrderedDict\n\ndef f():\n    return 2\n")
    assert code_hash("pkg.a", pkg) != before  # a change of code does


def test_code_of_strips_every_docstring_and_keeps_string_statements_that_are_code():
    plain = "class K:\n    x = 1\n\n\ndef f(a):\n    return 'doc?'\n"
    documented = ('"""Module."""\nclass K:\n    """A class."""\n    x = 1\n\n\n'
                  'def f(a):\n    """A function."""\n    return \'doc?\'  # not a docstring\n')
    assert code_of(plain) == code_of(documented)
    assert code_of("def f():\n    return 'a'\n") != code_of("def f():\n    return 'b'\n")
    assert code_of("def f():\n    'only a docstring'\n") == code_of("def f():\n    pass\n")


HASH_IN_A_NEW_PROCESS = """
import sys
from pathlib import Path
from delay_stability import files
print(files.code_hash("pkg.a", Path(sys.argv[1])), int(files._DISK["dirty"]))  # dirty: something was parsed
"""


def test_the_code_cache_is_kept_between_processes_and_follows_edits(pkg, tmp_path):
    """A second process reads the parsed modules from the cache file (DELAY_STABILITY_CODE_CACHE)
    and gets the same hash as with no cache; an edited module is parsed again and changes it."""
    import json
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache" / "code.json"

    def run(cache_path):
        env = dict(os.environ, DELAY_STABILITY_CODE_CACHE=str(cache_path), PYTHONPATH=str(SRC))
        out = subprocess.run([sys.executable, "-c", HASH_IN_A_NEW_PROCESS, str(pkg)], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    first, parsed = run(cache)
    assert parsed == 1
    data = json.loads(cache.read_text())
    assert data["format"] == 1 and {Path(k[0]).name for k, _ in data["code"]} >= {"a.py", "b.py", "c.py"}
    again, parsed = run(cache)
    assert again == first and parsed == 0  # every module came from the file
    assert run("")[0] == first  # no cache at all: the same hash
    c = pkg / "pkg" / "c.py"
    c.write_text("from collections import OrderedDict\n\ndef f():\n    return 20\n")
    edited, parsed = run(cache)
    assert parsed == 1 and edited != first and edited == run("")[0]
    cache.write_text("{not json")  # a damaged cache is ignored and rewritten
    assert run(cache)[0] == edited and json.loads(cache.read_text())["format"] == 1
