"""Benchmark several models under one protocol: ``python -m recbole_semprune.benchmark``.

    python -m recbole_semprune.benchmark --dataset=ml-100k --models=SASRec,BERT4Rec \\
        --max_steps=200 --eval_max_users=500 [--KEY=VALUE ...] [--Model.KEY=VALUE ...]

Every model trains under the same budget (``--epochs N`` full epochs or ``--max_steps N``
optimisation steps), seed and machine, one after another, each in a fresh process; the tables
(``results.csv``, ``results.md``) land in ``--output``. See docs/benchmarks.md.

* :mod:`.cli` parses the command line, checks every model and config before training, runs
  the workers and writes the tables (:func:`main`, :func:`run_benchmark`);
* :mod:`.worker` builds, fits and evaluates one model (:func:`run_model`);
* :mod:`.report` declares every column once and writes the tables and plots;
* :mod:`.latency` (``python -m recbole_semprune.benchmark.latency``): latency and state per
  user against history length; :mod:`.results`: models trained to early stopping, several seeds.
"""

from recbole_semprune.benchmark.cli import main, parse_args, run_benchmark
from recbole_semprune.benchmark.common import BenchmarkError

__all__ = ["BenchmarkError", "main", "parse_args", "run_benchmark"]
