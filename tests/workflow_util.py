"""Run the real Snakemake workflow in a throw-away copy of the repository's workflow files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def copy_workflow(dest):
    """Copy Snakefile, config.yaml, environment.yml (the rules' `conda:` file) and workflow/."""
    shutil.copy(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy(REPO / "config.yaml", dest / "config.yaml")
    shutil.copy(REPO / "environment.yml", dest / "environment.yml")
    shutil.copytree(REPO / "workflow", dest / "workflow")
    return dest


def snakemake(workdir, *args, timeout=900, env=None, python=None):
    """Run snakemake in ``workdir`` (``python``: run it as ``python -m snakemake`` with that
    interpreter; ``env``: extra environment variables)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    environ["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{environ.get('PATH', '')}"
    environ.update(env or {})
    command = [str(python), "-m", "snakemake"] if python else [str(SNAKEMAKE)]
    return subprocess.run([*command, *args], cwd=workdir, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def edit_config(workdir, edit):
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
