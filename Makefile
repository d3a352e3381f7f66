# iot-anchor: the README's two commands are `make demo` and `make test`.
# Both run `setup` first; a second `make setup` installs nothing and takes seconds.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MICROPYTHON := .cache/micropython/micropython
PYTEST_ARGS ?=

.PHONY: setup venv mosquitto postgresql micropython console-assets chromium test test-unit \
        test-boards demo lint bench bench-firmware bench-gateway bench-provenance clean fuzz

setup: venv mosquitto postgresql micropython console-assets chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the build backend ([build-system] requires) in the venv too, so that
	@# tests/integration/test_wheel.py builds the wheel offline (--no-build-isolation)
	$(PY) -c 'import subprocess, sys, tomllib; subprocess.check_call([sys.executable, "-m", \
	  "pip", "install", "-q", *tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]])'
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" -eq 0 ]; then \
	  echo "setup: installing mosquitto from Debian's packages"; \
	  (apt-get install -y -q mosquitto || (apt-get update -q && apt-get install -y -q mosquitto)) >/dev/null; \
	else \
	  echo "setup: mosquitto is missing; install it with:  sudo apt-get install -y mosquitto"; exit 1; \
	fi

# The console's charting library (uPlot, from the npm registry, integrity pinned) into
# gateway/console/static/vendor/ (gitignored): tools/fetch-uplot, which does nothing the 2nd time.
console-assets:
	@tools/fetch-uplot

# Debian's Chromium and its chromedriver: the console's browser tests drive them (Selenium,
# tests/integration/test_console_browser.py); nothing is downloaded at test time.
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" -eq 0 ]; then \
	  echo "setup: installing chromium and chromium-driver from Debian's packages"; \
	  (apt-get install -y -q chromium chromium-driver || (apt-get update -q && \
	   apt-get install -y -q chromium chromium-driver)) >/dev/null; \
	else \
	  echo "setup: chromium is missing; install it with:  sudo apt-get install -y chromium chromium-driver"; exit 1; \
	fi

# PostgreSQL's server programs (initdb, postgres) for the tests' private clusters
# (gateway/sim/postgres.py) and `--store postgresql://`; Debian keeps them off PATH, in
# /usr/lib/postgresql/<major>/bin. The package's own cluster is not used by the tests.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" -eq 0 ]; then \
	  echo "setup: installing postgresql from Debian's packages"; \
	  (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >/dev/null; \
	else \
	  echo "setup: PostgreSQL is missing; install it with:  sudo apt-get install -y postgresql"; exit 1; \
	fi

# Also a 32-bit build (micropython32: a board's object sizes, for the heap-limit test), where
# tools/install-micropython --32bit supports it (x86_64, 32-bit systems); elsewhere (status 3)
# set-up goes on and the heap-limit test fails saying so.
# The Unix port is also linked into .venv/bin, so `micropython` is on PATH once the venv is active.
micropython: venv
	@p=$$(tools/install-micropython | tail -n 1) && p=$$(readlink -f "$$p") && \
	  if [ "$$p" != "$$(readlink -f $(VENV)/bin/micropython 2>/dev/null)" ]; then \
	    ln -sf "$$p" $(VENV)/bin/micropython; fi
	@tools/install-micropython --32bit >/dev/null || { rc=$$?; [ $$rc -eq 3 ] || exit $$rc; \
	  echo "setup: no 32-bit MicroPython here (see above); everything but the heap-limit test runs"; }

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Longer decoder fuzzing than `make test` does: hypothesis with more examples, then atheris
# (coverage-guided, Linux x86_64 only) for FUZZ_SECONDS.
FUZZ_SECONDS ?= 120
fuzz: venv
	IOT_ANCHOR_FUZZ_EXAMPLES=5000 $(PY) -m pytest -q tests/unit/test_fuzz_decoder.py
	@if $(PY) -c 'import atheris' 2>/dev/null; then \
	  mkdir -p .cache && $(PY) tools/fuzz_decoder.py --seconds $(FUZZ_SECONDS) --artifacts .cache \
	    2>.cache/fuzz-decoder.log || { tail -40 .cache/fuzz-decoder.log; exit 1; }; \
	else echo "fuzz: atheris is not installed here (Linux x86_64 only); hypothesis ran alone"; fi

test-unit: setup
	$(PY) -m pytest tests/unit tests/firmware $(PYTEST_ARGS)

# DEMO_ARGS=--keep: keep the demo's folder and its console up until Ctrl-C
DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/iot-anchor demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check gateway tests tools firmware
	$(VENV)/bin/mypy
	$(PY) tools/check_layers.py

bench-firmware: setup
	$(PY) tools/bench_firmware.py

bench-gateway: setup
	$(PY) tools/bench_gateway.py

# dataset export and verify of PROVENANCE_READINGS readings (issue 14's goals; docs/provenance.md)
PROVENANCE_READINGS ?= 1000000
bench-provenance: setup
	$(PY) tools/bench_provenance.py --readings $(PROVENANCE_READINGS)

# BENCH_ARGS: e.g. --duration 60, --sweep 100,1000,5000 (draws docs/bench-devices.png),
# --ledger 1000000. The bench extra (matplotlib, for the plot) is installed once.
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	@touch $@

bench: setup $(BENCH_STAMP)
	$(PY) tools/bench.py $(BENCH_ARGS)

test-boards: setup
	tools/test-boards

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
