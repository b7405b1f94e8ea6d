# The README's commands. Each works from a fresh clone: it makes a project-local
# virtualenv, builds ferroloop into it with the release profile, and runs.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
PIP    := $(VPY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench bench-smoke lint install venv cargo-test conformance clean

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

test: install $(VENV)/.test-deps cargo-test
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
	rm -rf $(VENV) target
