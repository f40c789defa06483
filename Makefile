# Two commands for a fresh clone: `make demo` and `make test`. Both create .venv first.
VENV := .venv
BIN := $(VENV)/bin
# Offline corpora for tests (and for the demo when present): the shared data folder beside the clone.
SHARED_DATA := $(wildcard ../shared/data/timemachine.txt)
export CHARLM_DATA_HOME ?= $(if $(SHARED_DATA),$(abspath ../shared/data),)

.PHONY: setup demo test bench clean

setup $(BIN)/charlm: pyproject.toml
	./scripts/setup.sh
	touch $(BIN)/charlm

demo: $(BIN)/charlm
	$(BIN)/charlm train --config configs/rnn.yaml --force
	$(BIN)/charlm generate --prefix "time traveller" --length 200

test: $(BIN)/charlm
	$(BIN)/python -m pytest

bench: $(BIN)/charlm
	$(BIN)/python scripts/bench_preprocess.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_generate.py

clean:
	rm -rf $(VENV) runs data .pytest_cache
