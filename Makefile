# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU build that fits a small machine; a bare `torch` pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test install install-test clickhouse-server zookeeper chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e '.[test]'

demo: install
	$(BIN)/vigil demo

# Debian's clickhouse-server is a real server for the native-protocol path; the tests start it.
clickhouse-server:
	@command -v clickhouse-server >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null; }

# Debian's zookeeper (and a JRE): the ClickHouse cluster test starts it standalone beside four clickhouse-servers.
zookeeper:
	@test -f /usr/share/java/zookeeper.jar || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; }

# Debian's chromium: the labelling-UI test drives it headless through playwright (no browser download).
chromium:
	@test -x /usr/bin/chromium || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install-test clickhouse-server zookeeper chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest
