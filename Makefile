# One obvious way to run things: make run, make test, make bench, make lint.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: run test bench lint venv clean

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml package.json package-lock.json scripts/install-system-deps scripts/install-assets
	./scripts/install-system-deps
	./scripts/install-assets
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	if command -v swig >/dev/null && [ -f /usr/include/PCSC/winscard.h ]; then \
	  $(PY) -m pip install -q -e '.[test,pcsc]'; \
	else \
	  $(PY) -m pip install -q -e '.[test]'; \
	fi
	touch $(VENV_STAMP)

## Start the whole system on SQLite with a demo city loaded.
run: venv
	.venv/bin/yikatong demo --serve

## Run every test (real pcscd, PostgreSQL and Redis where present), then the soak and
## load runs in their bounded form. The tests wait on PostgreSQL, subprocesses and the browser
## more than they compute, so all but the PC/SC ones run on TEST_WORKERS xdist workers, each
## file whole on one worker; the PC/SC ones (marker pcsc, given to every test that uses the
## pcscd fixture: tests/conftest.py) run after them in one process, since the vpcd slots are one
## machine-wide resource.
TEST_WORKERS ?= 3
test: venv
	./scripts/ensure-services
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not soak and not pcsc" $(PYTEST_ARGS)
	$(PY) -m pytest -m "pcsc and not soak" $(PYTEST_ARGS)
	YIKATONG_SOAK_CYCLES=4 $(PY) -m pytest -m soak $(PYTEST_ARGS)

## Benchmarks: figures and ratios against baselines measured in the same run.
bench: venv
	./scripts/ensure-services
	$(PY) -m benchmarks

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis yikatong.db
