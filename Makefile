# Two commands for a newcomer: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test unit lint clean

setup: system-deps $(VENV)/.installed

# Debian's ClickHouse server (18.16) backs the local stack and the tests.
system-deps:
	@if ! command -v clickhouse-server >/dev/null && [ ! -x /usr/sbin/clickhouse-server ]; then \
		echo "Installing Debian's clickhouse-server ..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			clickhouse-server clickhouse-client >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/journey demo

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/pytest tests/unit

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .journey .pytest_cache .ruff_cache *.egg-info
