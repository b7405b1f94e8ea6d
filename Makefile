# The README's commands. Each works from a fresh clone: it makes a project-local
# virtualenv per interpreter (.venv-X.Y), builds ferroloop into it with the
# release profile, and runs.
#
# PYTHON  the interpreter of demo, bench, conformance and install (default python3).
# PYTHONS the interpreters `make test` tests on, one after the other (default: each
#         of CPython 3.11, 3.12 and 3.13 this machine has, by tools/find-pythons.sh;
#         PYTHON when it finds none).
PYTHON  ?= python3
PYTHONS ?= $(or $(shell tools/find-pythons.sh 3.11 3.12 3.13 2>/dev/null),$(PYTHON))
PYVER   := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV    ?= .venv-$(PYVER)
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-one bench bench-smoke soak differential memcheck fuzz lint install venv cargo-test conformance wheels clean

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

# A million requests through an echo server and through uvicorn on ferroloop and uvloop,
# with connections opened and closed throughout; fails if ferroloop's server grows in
# memory or fds after warm-up (bench/soak.py; results and soak.png in bench/results/soak).
soak: install $(VENV)/.test-deps
	cargo build --release -q -p loadgen
	$(VPY) bench/soak.py

# The differential tests (asyncio and ferroloop given the same generated scenarios:
# scheduling operations, and stream and pipe transport and peer operations) with many
# more examples than make test runs.
DIFF_EXAMPLES ?= 2000
differential: install $(VENV)/.test-deps
	FERROLOOP_DIFF_EXAMPLES=$(DIFF_EXAMPLES) FERROLOOP_TEST_HANG_TIMEOUT=36000 \
		$(VPY) -m pytest tests/test_differential.py tests/test_differential_transport.py \
		tests/test_differential_pipes.py -q

# The tests that reach the handle memory, the fast call path, the untracking of
# contexts and handles and the raw syscalls, under valgrind memcheck: fails on any
# error with a frame in ferroloop's code (tools/memcheck.py; slow: tens of minutes).
memcheck: install $(VENV)/.test-deps
	$(VPY) tools/memcheck.py

# cargo fuzz (fuzz/): socket address conversion, the write queue's partial sends, and
# receiving into a protocol's buffer at any length and alignment, each target for
# FUZZ_SECONDS (needs the nightly toolchain and `cargo install cargo-fuzz`; the targets
# link PYTHON's libpython). New corpus entries stay in fuzz/corpus, crashes in
# fuzz/artifacts. Not part of make test.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= sockaddr write_queue recv_into
fuzz:
	cd fuzz && PYTHON=$(PYTHON) cargo +nightly fuzz build -O
	@set -e; cd fuzz; for t in $(FUZZ_TARGETS); do \
		echo "==== cargo fuzz run $$t for $(FUZZ_SECONDS) s"; \
		PYTHON=$(PYTHON) cargo +nightly fuzz run -O $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# Wheels: a manylinux wheel for each CPython of PY_VERSIONS found here (tools/find-pythons.sh
# says which are missing), built by maturin with zig against glibc 2.17 (manylinux2014), so
# they install on glibc 2.17 and newer; and for each target of CROSS_TARGETS whose Rust
# target is installed or can be added, cross-built for every version of PY_VERSIONS. Then
# tools/check_wheels.py audits each wheel (auditwheel show) and installs and runs the native
# ones, each in a fresh virtualenv of its interpreter without a Rust toolchain on PATH.
# `make wheels CROSS_TARGETS=` builds the native wheels only.
PY_VERSIONS   ?= 3.11 3.12 3.13
CROSS_TARGETS ?= aarch64-unknown-linux-gnu
WVENV         := .venv-wheels
WVPY          := $(WVENV)/bin/python
MATURIN_BUILD := CARGO_ZIGBUILD_PYTHON_PATH=$(CURDIR)/$(WVPY) nice -n 10 $(WVENV)/bin/maturin \
                 build --release --zig --compatibility manylinux2014 --out dist

$(WVENV)/.deps: tools/wheel-requirements.txt
	$(PYTHON) -m venv $(WVENV)
	$(WVPY) -m pip --disable-pip-version-check -q install -r tools/wheel-requirements.txt
	touch $@

wheels: $(WVENV)/.deps
	@set -e; \
	pythons=$$(tools/find-pythons.sh $(PY_VERSIONS)) || { \
	  echo "make wheels: found no CPython of $(PY_VERSIONS)" >&2; exit 1; }; \
	echo "make wheels: native wheels for:" $$pythons; \
	rm -f dist/ferroloop-*.whl; \
	$(MATURIN_BUILD) -i $$pythons; \
	host=$$(rustc -vV | sed -n 's/^host: //p'); \
	for t in $(CROSS_TARGETS); do \
	  [ "$$t" != "$$host" ] || continue; \
	  if ! rustup target list --installed 2>/dev/null | grep -qx "$$t" && \
	     ! RUST_BACKTRACE=0 timeout 300 rustup target add "$$t"; then \
	    echo "make wheels: SKIPPING $$t wheels: Rust target $$t is not installed and" \
	         "'rustup target add $$t' failed" >&2; continue; fi; \
	  echo "make wheels: cross-building $$t wheels for Python $(PY_VERSIONS)"; \
	  $(MATURIN_BUILD) --target "$$t" -i $(addprefix python,$(PY_VERSIONS)); \
	done; \
	$(WVPY) tools/check_wheels.py --auditwheel $(WVENV)/bin/auditwheel --versions "$(PY_VERSIONS)" \
	  $$(for p in $$pythons; do echo --python $$p; done) dist/ferroloop-*.whl

clean:
	rm -rf .venv .venv-* target dist
