# Two entry points: `make demo` and `make test`. Both run the idempotent set-up first.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup test test-pure lint typecheck unit unit-pure lab lab-pure image image-test guard demo bench soak pg-regress clean

setup:
	@./scripts/setup.sh

test: setup
	$(MAKE) --no-print-directory lint typecheck unit lab image guard

lint:
	$(VENV)/bin/ruff check appliance tests
	$(VENV)/bin/ruff format --check appliance tests
	shellcheck scripts/*.sh packer/*.sh .ci/run

typecheck:
	$(VENV)/bin/mypy

# The unit suite runs against both builds of the hot path: compiled (mypyc, scripts/compile.py)
# and pure Python (APPLIANCE_PURE=1 imports the .py sources; appliance/_pure.py). The pure run
# also runs masking's pre-filter with re instead of Hyperscan (APPLIANCE_PREFILTER=re;
# appliance/masking/_prefilter.py): nothing native of ours or of a dependency in the hot path.
PURE := APPLIANCE_PURE=1 APPLIANCE_PREFILTER=re

unit:
	$(PYTEST) tests/unit -q
	$(PURE) $(PYTEST) tests/unit -q -p no:cacheprovider

unit-pure:
	$(PURE) $(PYTEST) tests/unit -q -p no:cacheprovider

lab:
	$(PYTEST) tests/lab -q -m lab

lab-pure:
	$(PURE) $(PYTEST) tests/lab -q -m lab -p no:cacheprovider

# Every behaviour test against the pure-Python build (make test runs the compiled one, and
# the unit suite in both).
test-pure: setup
	$(MAKE) --no-print-directory unit-pure lab-pure guard

# The runner image baked for real: debootstrap, packer/provision.sh, boot with systemd-nspawn
# (tests/image/test_provision.py; about 3.5 minutes with its cache, 5 to 7 without: provisioning
# compiles the hot path).
image:
	$(PYTEST) tests/image -q -m image

image-test: setup
	$(MAKE) --no-print-directory image guard

# After the lab suite: nothing the project installs may remain on the host itself.
guard:
	$(PYTEST) tests/guard -q

demo: setup
	$(PY) -m tests.lab.demo

bench: setup
	$(PYTEST) tests/bench -q -s -m bench

# About 7 minutes: 200 sessions for 5 minutes, then a minute of reconnect churn.
soak: setup
	$(PYTEST) tests/soak -q -s -m soak

# PostgreSQL's own regression suite, direct and through the appliance (allow-everything
# policy): prints both pass/fail sets and their difference. Minutes; not part of `make test`.
pg-regress: setup
	./scripts/pg-regress-setup.sh
	$(PY) -m tests.regress.pg_regress

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo-output build
	find appliance -name '*.so' -delete
