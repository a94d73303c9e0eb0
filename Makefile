# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY := .venv/bin/python
STAMP := .venv/.setup-$(shell cat requirements.txt scripts/setup.sh | sha1sum | cut -c1-12)
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test test-fast bench clean-out

setup: $(STAMP)
$(STAMP): requirements.txt scripts/setup.sh
	scripts/setup.sh
	touch $@

# The mine job on the bundled sample data, local Ray, local disk (outputs in out/demo).
demo: setup
	$(PY) jobs/mine.py --input data/sample --output out/demo --every-n 10

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not cluster"

bench: setup
	$(PY) benchmarks/label_throughput.py

clean-out:
	rm -rf out/
