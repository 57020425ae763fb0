# netwatch developer entry points. `make setup` is idempotent and installs everything a
# fresh Debian 12 machine needs (run as root); `make test` is what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# System packages: bcc comes from Debian (python3-bpfcc), never from PyPI.
APT_PACKAGES := python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 \
	iproute2 iptables conntrack tcpdump iperf3 prometheus ethtool procps
STAMP := $(VENV)/.installed

.PHONY: setup system-packages venv lint typecheck imports unit test demo demo-offline bench clean

setup: system-packages $(STAMP)

system-packages:
	@bash scripts/install-system-packages.sh $(APT_PACKAGES)

$(STAMP): pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check netwatch tests benchmarks
	$(VENV)/bin/ruff format --check netwatch tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

imports: $(STAMP)
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: setup lint typecheck imports unit

# The live demo: two-node netns lab, an eBPF agent per node, scripted traffic, a report.
demo:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make demo needs root: sudo make demo (make demo-offline needs no root)" >&2; exit 2; fi
	@$(MAKE) --no-print-directory setup
	$(VENV)/bin/netwatch demo

# The offline walkthrough of the policy engine over the bundled scenarios (no root).
demo-offline: $(STAMP)
	@bash scripts/demo.sh

bench: setup
	$(PY) benchmarks/policy_matrix.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
