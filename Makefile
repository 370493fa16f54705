# The two entry points of the README. Each installs what it needs first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

demo: $(STAMP)
	$(VENV)/bin/kmodtrace vm

test: $(STAMP)
	$(VENV)/bin/ruff check tracer kmodlab tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -v -rs

setup: $(STAMP)

$(STAMP): pyproject.toml vm/bootstrap.sh kmodlab/programs.tsv
	bash vm/bootstrap.sh
	touch $(STAMP)

clean:
	rm -rf $(VENV) out
