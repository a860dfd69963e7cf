# Each target is one line; CI (.ci/run) runs the same test command as `make test`.
PY ?= python

build:
	$(PY) -m pip install -e '.[test]'
debug:
	FASTWS_DEBUG=1 $(PY) -m pip install -e '.[test]'
test:
	$(PY) -m pytest -q
lint:
	ruff check src tests bench compliance && $(PY) -m mypy
bench:
	$(PY) -m bench.bench_fanout --json bench/results/fanout-full.json && $(PY) -m bench.bench_memory --json bench/results/memory.json && $(PY) -m bench.plot_fanout bench/results/fanout-full.json
bench-core:
	$(PY) -m pytest bench/bench_core.py --benchmark-only -p no:cacheprovider
clean:
	rm -rf build dist src/*.egg-info src/fastws/*.c src/fastws/*.so

.PHONY: build debug test lint bench bench-core clean
