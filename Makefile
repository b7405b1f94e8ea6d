# The README's commands. Each works from a fresh clone: it makes a project-local
# virtualenv per interpreter (.venv-X.Y), builds ferroloop into it with the
# release profile, and runs.
#
# PYTHON  the interpreter of demo, bench, conformance and install (default python3).
# PYTHONS the interpreters `make test` tests on, one after the other (default: each
#         of CPython 3.11, 3.12 and 3.13 this machine has; tools/find-pythons.sh).
PYTHON  ?= python3
PYTHONS ?= $(shell tools/find-pythons.sh)
PYVER   := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV    ?= .venv-$(PYVER)
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-one bench bench-smoke lint install venv cargo-test conformance clean

venv: $(VPY)
$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Build and install ferroloop (release profile, LTO) into the virtualenv.
install: venv
	$(PIP) install .

# Test and benchmark tools, pinned.
$(VENV)/.test-deps: requirements-test.txt bench/requirements.txt | venv
	$(PIP) install -r requirements-test.txt -r bench/requirements.txt
	touch $@

demo: install
	$(VPY) -m ferroloop examples/demo.py

cargo-test:
	cargo test --workspace --profile quick -q

# The Rust tests once, then the whole pytest suite on each interpreter of PYTHONS;
# fails at the end if any interpreter failed, naming it.
test: cargo-test
	@failed=""; \
	for py in $(PYTHONS); do \
		echo "==== make test on $$py"; \
		$(MAKE) --no-print-directory test-one PYTHON=$$py || failed="$$failed $$py"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test failed on:$$failed"; exit 1; fi; \
	echo "make test passed on: $(PYTHONS)"

# The pytest suite on PYTHON alone.
test-one: install $(VENV)/.test-deps
	$(VPY) -m pytest tests

conformance: install $(VENV)/.test-deps
	$(VPY) -m pytest tests/conformance -q

bench: install $(VENV)/.test-deps
	cargo build --release -q -p loadgen
	$(VPY) bench/run.py

bench-smoke: install $(VENV)/.test-deps
	cargo build --release -q -p loadgen
	$(VPY) bench/run.py --smoke

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf .venv .venv-* target
