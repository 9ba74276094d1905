"""Install the pinned environment of ``requirements.lock`` into the running interpreter's environment,
fast: no dependency resolution (every package pinned, ``--no-deps``) and several pip processes at
once, each on its own share of the packages (no two install the same package, so they never write
the same files).

    python tools/install_lock.py requirements.lock [--jobs 3]

What makes a fresh set-up slow is not the bytes (the CUDA libraries unpack in seconds) but pip's
work per package: looking each one up in the indexes and compiling its sources. So the shares are
dealt by count, each share opened with one of the heaviest packages (torch, triton, the nvidia-*
libraries). Exit status 0 when every share installed; otherwise the failing pip's status, and
``make setup`` then falls back to pip's resolver (``pip install -e '.[test]'``), which installs
whatever is still missing (a lock written on another platform, a package not on this machine's index).

The lock is ``pip freeze`` of an environment that ``pip install -e '.[test]'`` resolved (``make lock``);
tests/test_setup.py checks that it pins every dependency of pyproject.toml at a version it allows.
(``package_name`` is PEP 503 by hand: on a fresh venv the ``packaging`` library is not there yet.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

#: Packages whose install is the longest: each share starts with one of them.
HEAVY = ("torch", "triton", "nvidia-cudnn-cu13", "torchvision", "scipy", "pandas", "sympy")


def read_lock(path: str) -> list[str]:
    """The requirement lines of a lock file (``name==version``; comments and blank lines skipped)."""
    lines = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def package_name(requirement: str) -> str:
    """``Torch_Vision==0.1`` -> ``torch-vision`` (PEP 503 normalised name)."""
    import re

    name = re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def shares(requirements: list[str], jobs: int) -> list[list[str]]:
    """``jobs`` disjoint shares of the requirements (their union is all of them): the heavy packages
    (HEAVY, in that order) dealt first, one per share in turn, then the rest in turn."""
    jobs = max(1, int(jobs))
    rank = {name: i for i, name in enumerate(HEAVY)}
    ordered = sorted(requirements, key=lambda r: rank.get(package_name(r), len(HEAVY)))
    out = [[] for _ in range(jobs)]
    for i, requirement in enumerate(ordered):
        out[i % jobs].append(requirement)
    return [s for s in out if s]


def install(requirements: list[str], jobs: int, quiet: bool = True) -> int:
    """Run one ``pip install --no-deps`` per share at once; the first non-zero exit status, else 0."""
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
    if quiet:
        base.append("--quiet")
    procs = [subprocess.Popen([*base, *share]) for share in shares(requirements, jobs)]
    statuses = [p.wait() for p in procs]
    return next((s for s in statuses if s != 0), 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("lock", help="the lock file (requirements.lock)")
    parser.add_argument("--jobs", type=int, default=3, help="pip processes at once (default 3)")
    args = parser.parse_args(argv)
    try:
        requirements = read_lock(args.lock)
    except OSError as exc:
        print(f"install_lock: cannot read {args.lock}: {exc.strerror}", file=sys.stderr)
        return 2
    return install(requirements, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
