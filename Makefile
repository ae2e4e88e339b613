# cci-local: `make demo` and `make test` are the two set-up commands; each works as
# the first command on a fresh machine (it creates .venv and installs what it needs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORPUS ?= ../shared/data/reddit/keto_nutrition_2022
DEMO_DB ?= demo.db

.PHONY: install demo test check bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml cci_local/buildflags.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch (on disk here); an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# llama-cpp-python compiles from source (~3 minutes on 2 cores), for this host but not
	# natively: no AMX, AVX-512 only where a probe runs it; your CMAKE_ARGS win (README).
	$(BIN)/python cci_local/buildflags.py --install
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The one-shot pipeline on the embedded model and the sample corpora, as a trial run
# (--quick: minutes, not a study); the report lands beside the store (demo-report.*).
demo: install
	$(BIN)/cci-local --db $(DEMO_DB) run r/keto r/nutrition --corpus $(CORPUS) --quick \
		--instrument weight-concerns

# The whole suite, slow end-to-end tests included (CI runs this; ~20 minutes on 2 cores).
test: install
	$(BIN)/python -m pytest

# The fast tier while working: lint, then every test not marked slow (~2-3 minutes).
check: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

bench: install
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_pii.py
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_topics.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_train_memory.py
	$(BIN)/python benchmarks/bench_survey.py
	$(BIN)/python benchmarks/bench_fidelity.py
	$(BIN)/python benchmarks/bench_adapters.py
	$(BIN)/python benchmarks/bench_leakage.py
	$(BIN)/python benchmarks/bench_mitigations.py dedup
	$(BIN)/python benchmarks/bench_mitigations.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm \
		$(basename $(DEMO_DB))-report.* $(basename $(DEMO_DB))-report_files adapters
