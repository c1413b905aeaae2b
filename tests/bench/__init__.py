"""Ferry's benchmark harness against nginx: `make bench` runs `python -m tests.bench.run`."""
