# cci-local: `make demo` and `make test` are the two set-up commands; each works as
# the first command on a fresh machine (it creates .venv and installs what it needs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/data/reddit/keto_nutrition_2022
DEMO_DB ?= demo.db

.PHONY: install demo test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch (on disk here); an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/cci-local --db $(DEMO_DB) ingest $(CORPUS)
	$(BIN)/cci-local --db $(DEMO_DB) topics
	$(BIN)/cci-local --db $(DEMO_DB) generate --mode template
	$(BIN)/cci-local --db $(DEMO_DB) generate --max-rows 4
	$(BIN)/cci-local --db $(DEMO_DB) status

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_topics.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_survey.py
	$(BIN)/python benchmarks/bench_fidelity.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
