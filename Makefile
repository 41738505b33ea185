# auctionlab developer targets. `make setup` once, then `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP_CONSTRAINTS ?= .ci/constraints.txt

.PHONY: setup test test-slow bench results lint format docs docs-serve clean

setup:  ## create .venv and install auctionlab with dev tools (CPU torch pinned)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c $(PIP_CONSTRAINTS) -e ".[dev]"

test:  ## default suite (minutes, CPU): one pytest worker per core, a test file per worker at a time
	$(BIN)/pytest -q -n auto --dist loadfile

test-slow:  ## long checks (learned mechanisms at scale=cpu, a sweep through scripts/slurm_local.sh's Slurm if installed) and fuzz tests with many examples
	$(BIN)/pytest -q -m slow -p no:cacheprovider
	HYPOTHESIS_PROFILE=slow $(BIN)/pytest -q tests/mechanisms/test_fuzz.py

bench:  ## performance benchmarks, JSON into outputs/bench/
	$(BIN)/python scripts/bench_train.py --env 2x2 --batch 512 --misreport-steps 50 --threads 2 --out outputs/bench/train_2x2.json
	$(BIN)/python scripts/bench_train.py --env 2x2 --batch 128 --misreport-steps 25 --local --no-reference --threads 2 --out outputs/bench/train_local_2x2.json
	$(BIN)/python scripts/bench_contention.py --out outputs/bench/contention_2x2.json
	$(BIN)/python scripts/bench_pf.py --env 10x3 --batch 128 --solve-batch 1024 --misreport-steps 5 --threads 2 --inference-batches 128 1024 8192 --out outputs/bench/pf_10x3.json
	$(BIN)/python scripts/bench_wdp.py --threads 2 --out outputs/bench/wdp.json
	$(BIN)/python scripts/bench_certify.py --train --env 2x2 --iterations 3000 --profiles 50 --out outputs/bench/certify_2x2.json
	$(BIN)/python scripts/bench_certify.py --run outputs/bench/certify_2x2_train --empirical --profiles 100 --out outputs/bench/certify_empirical_2x2.json
	$(BIN)/python scripts/bench_attack.py --train --env 2x2 --iterations 3000 --profiles 500 --attackers adaptive pgd --forwards --threads 1 --out outputs/bench/attack_2x2.json

results:  ## results pages docs/results/<experiment>.md from reproduce runs: make results RUNS="<run dir> ..."
	@test -n "$(RUNS)" || { echo 'make results RUNS="outputs/runs/<date>/<time>_reproduce ..."' >&2; exit 2; }
	$(BIN)/python scripts/results_pages.py $(RUNS) --docs docs

lint:  ## ruff, and the import layers (pyproject's [tool.importlinter])
	$(BIN)/ruff check auctionlab scripts tests
	$(BIN)/ruff format --check auctionlab scripts tests
	$(BIN)/lint-imports

docs:  ## the documentation site into site/ (strict: a broken link or docstring fails)
	$(BIN)/mkdocs build --strict

docs-serve:  ## live preview of the site on http://127.0.0.1:8000
	$(BIN)/mkdocs serve

format:
	$(BIN)/ruff format auctionlab scripts tests
	$(BIN)/ruff check --fix auctionlab scripts tests

clean:
	rm -rf outputs/runs outputs/multirun .pytest_cache site
