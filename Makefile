# The two commands: `make run` (the whole service, in the foreground) and `make test`.
# Both create/refresh ./.venv first (scripts/install.sh; idempotent, cached outside the clone).
PY := .venv/bin/python

.PHONY: install run test test-fast bench examples clean

install:
	@bash scripts/install.sh

run: install
	@exec $(PY) -m app.run

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

examples: install
	$(PY) scripts/make_examples.py

clean:
	rm -rf var out .pytest_cache

bench: install
	$(PY) scripts/bench.py
