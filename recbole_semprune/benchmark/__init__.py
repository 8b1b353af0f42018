"""Benchmark several models under one protocol: ``python -m recbole_semprune.benchmark``
(:mod:`.cli`: arguments, workers, tables; :mod:`.worker`: one model; :mod:`.report`: columns,
tables, plots; :mod:`.latency`, :mod:`.results`: the other commands). See docs/benchmarks.md."""

from recbole_semprune.benchmark.cli import main, parse_args, run_benchmark
from recbole_semprune.benchmark.common import BenchmarkError

__all__ = ["BenchmarkError", "main", "parse_args", "run_benchmark"]
