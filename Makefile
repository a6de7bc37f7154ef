# Two commands for a newcomer: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test unit lint bench clean

# Segment's browser library (the UMD bundle, no dependencies), for a test in Chromium.
# Defined before `setup`: make expands a rule's prerequisites as it reads the rule.
ANALYTICS_NEXT_VERSION := 1.84.3
ANALYTICS_NEXT := $(VENV)/analytics-next/package/dist/umd/index.js

setup: system-deps $(VENV)/.installed $(ANALYTICS_NEXT)

# Debian packages: ClickHouse 18.16 backs the local stack and the tests; Chromium runs
# the browser snippet's test; promtool (prometheus) tests the alerting rules; npm fetches
# Segment's browser library for its compatibility test; ZooKeeper coordinates the two
# ClickHouse replicas of the cluster test. Installed only when missing; npm
# by its command, as a Node.js from elsewhere (NodeSource's) bundles it and conflicts
# with Debian's package.
APT_PACKAGES := clickhouse-server clickhouse-client chromium prometheus zookeeper

system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing ..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(ANALYTICS_NEXT):
	mkdir -p $(VENV)/analytics-next
	cd $(VENV)/analytics-next && npm pack --silent @segment/analytics-next@$(ANALYTICS_NEXT_VERSION) >/dev/null \
		&& tar xzf segment-analytics-next-$(ANALYTICS_NEXT_VERSION).tgz
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

# Benchmarks on the local stack (tests/benchmarks): `make bench ARGS="--smoke"` for a
# quick run, `ARGS="--profile"` to see the worker's top costs.
bench: setup
	$(BIN)/python -m tests.benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .journey .pytest_cache .ruff_cache *.egg-info
