# The two commands: `make run` (the whole service, in the foreground) and `make test`.
# Both create/refresh ./.venv first (scripts/install.sh; idempotent, cached outside the clone).
PY := .venv/bin/python

.PHONY: install run lint test test-fast bench bench-gpu examples clean

install:
	@bash scripts/install.sh

run: install
	@exec $(PY) -m app.cli.run

# ruff (configured in pyproject.toml): the code passes it; `make test` runs it first.
lint: install
	.venv/bin/ruff check app workers tests scripts

# One torch thread per process in tests: the test process, the gateway and the worker share two
# cores, and torch's spinning threads thrash under contention (tiny models run 10x slower).
test: install lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra

test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra -m "not slow"

examples: install
	$(PY) scripts/make_examples.py

clean:
	rm -rf var out .pytest_cache

bench: install
	$(PY) scripts/bench.py

# Atelier's generation path vs stock diffusers on the real SD 1.5 / SDXL inpainting architectures (random
# weights, nothing downloaded); one JSON object on the last line. Without CUDA it runs a small CPU smoke
# version. Options: make bench-gpu ARGS="--archs sd15 --batches 1,8 --sdxl-size 1024" (see the script).
bench-gpu: install
	$(PY) scripts/bench_gpu.py $(ARGS)
