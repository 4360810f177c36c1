# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ticketmail db upgrade
	$(BIN)/ticketmail serve

test: $(STAMP)
	@# Compiled once here: under PYTHONDONTWRITEBYTECODE every process the suite starts (serve, its writer,
	@# the CLI) would compile the project's modules again (28 s of CPU in one measured run).
	$(BIN)/python -m compileall -q ingest bridge web storage ticketmail >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/lmtp_bench.py

clean:
	rm -rf $(VENV) var
