# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test docs docs-check bench clean

setup $(BIN)/charlm: pyproject.toml
	./scripts/setup.sh
	touch $(BIN)/charlm

demo: $(BIN)/charlm
	$(BIN)/charlm train --config rnn --force
	$(BIN)/charlm generate --prefix "time traveller" --length 200
	@echo "charlm is installed in $(VENV): 'source $(BIN)/activate' puts it on your PATH (or run $(BIN)/charlm)"

test: $(BIN)/charlm
	$(BIN)/ruff check src tests scripts
	$(MAKE) docs-check
	$(BIN)/python -m pytest

# The documentation site (docs/, Sphinx + MyST + furo). docs-check is the strict build `make test`
# runs (every warning is an error), into a fresh temporary folder it then removes; `make docs`
# builds into docs/_build/html and serves it.
docs-check: $(BIN)/charlm
	@out=$$(mktemp -d) && $(BIN)/sphinx-build -q -W --keep-going -b html docs "$$out"; rc=$$?; rm -rf "$$out"; exit $$rc

docs: $(BIN)/charlm
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html
	@echo "serving the docs at http://127.0.0.1:8080 (Ctrl-C stops)"
	$(BIN)/python -m http.server 8080 --bind 127.0.0.1 -d docs/_build/html

bench: $(BIN)/charlm
	$(BIN)/python scripts/bench_preprocess.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) runs data .pytest_cache docs/_build
