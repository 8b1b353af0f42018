"""Benchmark several models under one protocol: ``python -m recbole_semprune.benchmark``.

    python -m recbole_semprune.benchmark --dataset=ml-100k --models=SASRec,BERT4Rec \\
        --max_steps=200 --eval_max_users=500 [--KEY=VALUE ...] [--Model.KEY=VALUE ...]

Every model trains under the same budget (``--epochs N`` full epochs or ``--max_steps N``
optimisation steps), seed and machine, one after another, each in a fresh process; the tables
(``results.csv``, ``results.md``) land in ``--output``. See docs/benchmarks.md.

* :mod:`.cli` parses the command line, checks every model and config before training, runs
  the workers and writes the tables (:func:`main`, :func:`run_benchmark`);
* :mod:`.worker` builds, trains and evaluates one model (:func:`run_model`), in a subprocess
  (``python -m recbole_semprune.benchmark.worker SPEC.json``) or in-process;
* :mod:`.report` turns the per-model results into the tables and the optional plot.
"""

import sys

from recbole_semprune.benchmark import cli, latency
from recbole_semprune.benchmark.cli import BenchmarkError, parse_args, run_benchmark

__all__ = ["BenchmarkError", "main", "parse_args", "run_benchmark"]


def main(argv=None):
    """``python -m recbole_semprune.benchmark``: the latency mode (``--latency``,
    ``--latency_lengths``; :mod:`.latency`) or the training benchmark (:func:`cli.main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return latency.main(argv) if latency.requested(argv) else cli.main(argv)
