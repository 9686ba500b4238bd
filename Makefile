# op25b-ctl: every target installs what it needs first (scripts/bootstrap is idempotent).
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup demo demo-fleet test lint typecheck unit e2e bench reliability deb clean

help:
	@echo "make demo       lab gateway in network namespaces + example NMTnet policy (root)"
	@echo "make demo-fleet two lab gateways following one policy in a real etcd; a fleet rollback (root)"
	@echo "make test       lint, type check, unit and end-to-end tests (e2e needs root)"
	@echo "make unit       unit tests only (unprivileged: as nobody when run as root)"
	@echo "make e2e        end-to-end tests only (root)"
	@echo "make bench      ISP-scale benchmarks, writes docs/benchmarks.md (root)"
	@echo "make reliability  hostile input, faults, churn; writes docs/reliability.md (root)"
	@echo "make deb        build/deb/op25b-ctl_<version>_<arch>.deb with dpkg-buildpackage"
	@echo "make clean      remove the virtualenv and caches"

setup:
	@scripts/bootstrap

demo: setup
	$(PY) -m op25b_lab.demo

demo-fleet: setup
	$(PY) -m op25b_lab.demo_fleet

lint: setup
	$(VENV)/bin/ruff check op25b_ctl op25b_lab tests bench
	$(VENV)/bin/ruff format --check op25b_ctl op25b_lab tests bench

typecheck: setup
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy -p bench

# As root, as user nobody (scripts/unit-tests): no unit test may need privileges or the kernel.
unit: setup
	scripts/unit-tests $(PYTEST_ARGS)

e2e: setup
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

# Not part of `make test`: root, ~10 minutes; writes docs/benchmarks.md (BENCH_ARGS: see --help).
bench: setup
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench: needs root (network namespaces, nftables)" >&2; exit 1; fi
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.fleet
	$(PY) -m bench.discovery --write

# Not part of `make test` as a whole (its slow cases take minutes): root; runs
# tests/reliability/ with the slow cases and writes docs/reliability.md. The fast corpus and
# the property tests in the same directory run in `make test` too.
reliability: setup
	@if [ "$$(id -u)" -ne 0 ]; then echo "make reliability: needs root (network namespaces, nftables)" >&2; exit 1; fi
	$(PY) -m tests.reliability.report $(RELIABILITY_ARGS)

# The Debian package, built from a copy of the tree (dpkg-buildpackage writes into the parent
# directory). PIP_CACHE_DIR keeps pip's downloads between builds; the venv is rebuilt each time.
DEB_DIR := build/deb
deb: setup
	@scripts/build-deb $(DEB_DIR)

# The unit tests unprivileged (`make unit`), then everything else (e2e, reliability) as is.
test: lint typecheck unit
	$(VENV)/bin/pytest --ignore=tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build
