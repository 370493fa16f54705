# The two entry points of the README (demo, test). Each installs what it needs first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Each phase prints its wall time ([phase] lines; pytest prints one per test file), so
# that a log shows each phase against the README's budget.

.PHONY: demo test lint oracle lock lowest setup clean

demo: $(STAMP)
	$(VENV)/bin/kmodtrace vm

# The live oracle kernels are not built here (14-88 min on 2 cores): the model is proven
# against recorded oracle runs (tests/data/oracle-*), and `make oracle` boots them live.
test: $(STAMP)
	@t=$$(date +%s); $(VENV)/bin/ruff check tracer kmodlab tests && $(VENV)/bin/mypy \
	  && printf '[phase] lint: %ss\n' $$(($$(date +%s) - t))
	$(PY) -m pytest -v -rs -m "not oracle"

lint: $(STAMP)
	$(VENV)/bin/ruff check tracer kmodlab tests
	$(VENV)/bin/mypy

# Before any change to the model or to the dups.c hooks lands: the live oracle, built
# (cached in ~/.cache/kmodtrace/oracle) and booted, N of N.
oracle: $(STAMP)
	$(PY) -m pytest -v -rs -m oracle

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock vm/bootstrap.sh kmodlab/programs.tsv
	@t=$$(date +%s); bash vm/bootstrap.sh && printf '[phase] bootstrap: %ss\n' $$(($$(date +%s) - t))
	touch $(STAMP)

# Upgrading a PyPI package is a commit of its own: `make lock`, then the whole suite.
LOCK_OPTS := --all-extras --generate-hashes --python-version 3.11 \
             --python-platform x86_64-manylinux_2_36 --no-header
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_OPTS) --upgrade -o requirements.lock

# pyproject.toml's lower bounds, outside CI: the lowest direct dependencies in a venv of
# their own, then the tests that need no VM.
lowest: $(STAMP)
	rm -rf .venv-lowest
	/usr/bin/python3 -m venv --system-site-packages .venv-lowest
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_OPTS) --resolution lowest-direct \
	  -o .venv-lowest/requirements.txt
	.venv-lowest/bin/pip install -q --require-hashes --no-deps -r .venv-lowest/requirements.txt
	.venv-lowest/bin/pip install -q --no-deps --no-build-isolation -e .
	.venv-lowest/bin/python -m pytest -q -m "not vm and not wheel and not oracle" \
	  -k "not test_the_venv_holds_what_the_lock_says"

clean:
	rm -rf $(VENV) .venv-lowest out
