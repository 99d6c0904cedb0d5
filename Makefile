# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DAGSTER_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export AIS_RUNTIME_DIR ?= $(CURDIR)/runtime
export DAGSTER_HOME ?= $(AIS_RUNTIME_DIR)/dagster_home
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: setup demo test test-fast lint dev bench report clean

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

# Quiet by design (issue 14): `make demo` prints under 60 lines; recipes are not echoed.
setup: $(UV)
	@# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on our machines) every
	@# process would otherwise re-compile dagster, pandas and sqlalchemy (~3 s per `ais` call).
	@$(UV) sync --frozen -q --compile-bytecode
	@$(UV) run -q python -m compileall -q -j 2 ais_pipelines assets sensors resources >/dev/null
	@umask 077 && mkdir -p $(DAGSTER_HOME)   # runtime files are owner-only
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	@$(UV) run -q ais policies validate
	@cd dbt && $(UV) run -q dbt parse --quiet   # dagster-dbt needs a manifest before the code location loads

demo: setup
	@$(UV) run -q ais demo

test: setup
	$(UV) run ruff check .
	$(UV) run pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25   # two workers, a file each at a time, in collection order (longest first: tests/conftest.py)

test-fast: setup
	$(UV) run pytest -m "not slow and not browser"

lint: setup
	$(UV) run ruff check .

dev: setup
	$(UV) run dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup
	$(UV) run python benchmarks/bench_ingestion.py
	$(UV) run python benchmarks/bench_intelligence.py
	$(UV) run python benchmarks/bench_auction.py --quick
	$(UV) run python benchmarks/bench_policy.py
	$(UV) run python benchmarks/bench_execution.py

report: setup
	$(UV) run ais report

clean:
	rm -rf runtime dbt/target dbt/logs

# --- issue 15: the production profile (PostgreSQL instance + ledger, daemon, webserver) -------
.PHONY: up down status
up: setup
	./ais_pipelines/service/service.sh up

status:
	./ais_pipelines/service/service.sh status

down:
	./ais_pipelines/service/service.sh down
