# Two commands: `make figures` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
TARGET ?=

.PHONY: setup lock figures readme test slurm-test benchmarks lint clean-figures

setup: $(STAMP)

# The pinned environment first (requirements.lock: no resolution, three pip processes at once), then
# pip's resolver for the project itself and anything the lock did not install (another platform).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python tools/install_lock.py requirements.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import delay_stability, torch, torchvision, snakemake"
	touch $(STAMP)

# requirements.lock from the environment pip resolves for pyproject.toml (run after changing a dependency).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	{ echo "# The resolved environment of 'pip install -e .[test]' ($$(.lock-venv/bin/python -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())')), written by 'make lock'."; \
	  echo "# make setup installs it without resolving (tools/install_lock.py), then pip install -e '.[test]' checks it."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v "^delay-stability"; } > requirements.lock
	rm -rf .lock-venv

# Builds the default target (`rule all`: every figure at the current scale, `quick` by default).
figures: setup
	$(BIN)/snakemake --cores $(CORES) $(TARGET)
	if [ -z "$(TARGET)" ]; then $(MAKE) --no-print-directory readme; fi

# The README's table of reproduced figures, from the claims ledger (between its claims markers);
# `make figures` runs it after a full build (docs/claims.md is a target of the workflow).
readme: setup
	$(BIN)/delay-stability claims --scale quick --readme README.md

# The suite in $(CORES) processes, one test file per process at a time (--dist loadfile: a file's
# module fixtures and its real processes stay together); many tests wait on subprocesses. The files
# are handed out longest first (tests/conftest.py orders them by benchmarks/results/test_time.json;
# --no-loadscope-reorder keeps that order instead of xdist's most-tests-first).
test: setup
	$(BIN)/python -m pytest -q -n $(CORES) --dist loadfile --no-loadscope-reorder

# A one-node SLURM cluster on this machine, then a quick target through workflow/profiles/slurm, then
# the preemption checks (a requeued job and a chain of 1-minute jobs; `make test` runs the requeue only).
slurm-test: setup
	bash tests/slurm/run.sh && bash tests/slurm/run.sh --preempt

# The component benchmarks (each writes benchmarks/results/<name>.json). The long measurements are run by
# hand, as the README says: fresh_clone.py (the two commands from a fresh clone), test_time.py,
# smoke_processes.py and pilot_standins.py (the fig5/fig9 stand-in pilot: about 30 CPU-minutes, needs mlxtend).
BENCHMARKS := asgd theory sharpness ensemble imagenet paper_budget checkpoints
benchmarks: setup
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done

lint: setup
	$(BIN)/snakemake --lint

clean-figures:
	rm -rf figures/*.pdf figures/*.png
