"""fastws benchmark scripts (not tests). Run as ``python -m bench.bench_fanout`` etc."""
