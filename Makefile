# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv first.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup $(BIN)/charlm: pyproject.toml
	./scripts/setup.sh
	touch $(BIN)/charlm

demo: $(BIN)/charlm
	$(BIN)/charlm train --config rnn --force
	$(BIN)/charlm generate --prefix "time traveller" --length 200
	@echo "charlm is installed in $(VENV): 'source $(BIN)/activate' puts it on your PATH (or run $(BIN)/charlm)"

test: $(BIN)/charlm
	$(BIN)/ruff check src tests scripts
	$(BIN)/python -m pytest

bench: $(BIN)/charlm
	$(BIN)/python scripts/bench_preprocess.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
