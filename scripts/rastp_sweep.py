#!/usr/bin/env python
"""RASTP sweep: prune_layer x keep_ratio x prune_scorer (x keep_ratio_mode) under one budget,
as one benchmark run of labelled RASTP variants with an unpruned baseline (docs/rastp.md).
Writes <output>/sweep.csv, <output>/sweep.png and the benchmark's own results.*.

    python scripts/rastp_sweep.py --data_path=../shared/datasets --dataset=amazon-beauty \
        --prune_layers=1,2,3 --keep_ratios=0.25,0.3333,0.5 --max_steps=300 --threads=1
"""

import argparse
import datetime
import itertools
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.benchmark import report, run_benchmark  # noqa: E402
from recbole_semprune.benchmark.common import logger, run_command  # noqa: E402

SETTINGS = ["prune_layer", "keep_ratio", "prune_scorer", "keep_ratio_mode"]
KEPT_COLUMNS = ["kept_tokens_per_history", "tokens_per_history", "kept_fraction",
                "padded_length", "pruned_length"]


def _list(cast):
    def parse(text):
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))

    return parse


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     epilog="Any other --KEY=VALUE is a config key for every point.")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data_path", default="../shared/datasets")
    for flag, cast, default in (("prune_layers", int, [1, 2, 3]), ("keep_ratios", float, [0.25, 0.3333, 0.5]),
                                ("scorers", str, ["rastp", "attention", "saliency_l1", "random"]),
                                ("keep_ratio_modes", str, ["fixed"])):
        parser.add_argument(f"--{flag}", type=_list(cast), default=default)
    parser.add_argument("--design", choices=["grid", "star"], default="grid",
                        help="grid: every combination; star: one factor at a time around the first values")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max_steps", type=int, help="optimisation steps per point (default 300)")
    budget.add_argument("--epochs", type=int, help="full epochs per point")
    parser.add_argument("--eval_max_users", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--valid", action="store_true", help="also report validation metrics")
    parser.add_argument("--metric", default="ndcg@10", help="accuracy axis of the plot")
    parser.add_argument("--resume", action="store_true", help="reuse the finished points of --output")
    parser.add_argument("--output", default=None, help="default bench_out/rastp-sweep-<dataset>-<time>")
    return parser


def grid(args):
    """The points: the unpruned baseline first, then every combination (``--design=grid``) or
    the centre and its one-factor variations (``--design=star``)."""
    factors = {"prune_layer": args.prune_layers, "keep_ratio": args.keep_ratios,
               "prune_scorer": args.scorers, "keep_ratio_mode": args.keep_ratio_modes}
    if args.design == "grid":
        combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
    else:
        centre = {key: values[0] for key, values in factors.items()}
        combos = [centre] + [dict(centre, **{key: value}) for key, values in factors.items()
                             for value in values[1:]]
    return [{"prune_scorer": "none"}] + combos


def point_name(point):
    if point["prune_scorer"] == "none":
        return "unpruned"
    ratio = f"{point['keep_ratio']:g}".replace(".", "_")  # a label has no dot
    return f"{point['prune_scorer']}-p{point['prune_layer']}-k{ratio}-{point['keep_ratio_mode']}"


def benchmark_argv(args, points, extra, output):
    """The benchmark's command line: one labelled RASTP variant per point."""
    budget = f"--epochs={args.epochs}" if args.epochs else f"--max_steps={args.max_steps or 300}"
    argv = [f"--dataset={args.dataset}", f"--data_path={args.data_path}", budget,
            "--models=" + ",".join(f"{point_name(p)}=RASTP" for p in points),
            "--baseline=unpruned", f"--output={output}"]
    argv += [f"--eval_max_users={args.eval_max_users}"] if args.eval_max_users else []
    argv += [f"--threads={args.threads}"] if args.threads else []
    argv += [flag for flag, on in (("--valid", args.valid), ("--resume", args.resume)) if on]
    return argv + [f"--{point_name(p)}.{key}={value}" for p in points for key, value in p.items()] + extra


def sweep_rows(points, rows):
    """One row per point: its settings, the benchmark's figures, and the speed-ups against the
    unpruned point (its seconds / this point's: wall clock, CPU seconds, evaluation)."""
    flat = {row["model"]: row for row in report.flat_rows(rows, "unpruned")}
    out = []
    for point, row in zip(points, rows):
        settings = {key: point.get(key, "") for key in SETTINGS}
        figures = dict(flat[row["model"]], **{key: row.get(key) for key in KEPT_COLUMNS})
        for speedup, ratio in (("train_speedup", "train_seconds_per_step_ratio"),
                               ("train_cpu_speedup", "train_cpu_seconds_per_step_ratio"),
                               ("eval_speedup", "eval_seconds_ratio")):
            figures[speedup] = 1 / figures[ratio] if figures.get(ratio) else None
        out.append({"point": row["model"], **settings, **figures})
    return out


def write_csv(path, rows):
    metrics = list(dict.fromkeys(k for r in rows for k in r if "@" in k))
    columns = (["point"] + SETTINGS + ["status", "train_seconds_per_step", "train_speedup",
               "train_cpu_seconds_per_step", "train_cpu_speedup", "eval_seconds", "eval_speedup",
               "tokens_per_second", "peak_memory_mb"] + KEPT_COLUMNS + metrics
               + ["train_steps", "train_seconds_per_epoch", "epoch_time_source", "eval_users",
                  "params", "error"])
    report.write_csv(path, columns, rows)


def write_plot(path, rows, metric, title, speedup="train_cpu_speedup"):
    """Speed-up (x, CPU seconds by default) vs ``metric``: one colour per scorer, labels
    prune_layer / keep_ratio, the unpruned point a star."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(speedup) and r.get(metric) is not None]
    if not ok:
        logger.warning("no finished point has %s: %s skipped", metric, path)
        return False

    def draw(ax, plt):
        for scorer in dict.fromkeys(r["prune_scorer"] for r in ok):
            mine = [r for r in ok if r["prune_scorer"] == scorer]
            ax.scatter([r[speedup] for r in mine], [r[metric] for r in mine], s=120 if scorer == "none"
                       else 45, marker="*" if scorer == "none" else "o", zorder=3,
                       label="unpruned" if scorer == "none" else scorer)
            for r in mine if scorer != "none" else ():
                ax.annotate(f"p{r['prune_layer']}/{r['keep_ratio']:g}", (r[speedup], r[metric]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=8)
        ax.set(xlabel="training speed-up vs unpruned (CPU seconds/step ratio); labels: "
               "prune_layer/keep_ratio", ylabel=f"test {metric}", title=title)
        ax.grid(alpha=0.3)

    return report.plot(path, draw, figsize=(7.5, 5))


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not re.match(r"^--[A-Za-z_][\w.-]*=", a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config keys are --key=value)")
    clash = [a for a in extra if a.split("=", 1)[0].lstrip("-") in SETTINGS]
    if clash:
        parser.error(f"{' '.join(clash)}: the sweep sets these keys itself")
    now = datetime.datetime.now()
    output = args.output or os.path.join("bench_out", f"rastp-sweep-{args.dataset}-{now:%Y%m%d-%H%M%S}")
    points = grid(args)

    def run(argv):
        status, _, rows = run_benchmark(argv)
        rows = sweep_rows(points, rows)
        write_csv(os.path.join(output, "sweep.csv"), rows)
        budget = f"epochs={args.epochs}" if args.epochs else f"max_steps={args.max_steps or 300}"
        title = f"RASTP sweep, {args.dataset}, {budget}, eval users: {args.eval_max_users or 'all'}"
        if write_plot(os.path.join(output, "sweep.png"), rows, args.metric, title):
            logger.info("plot: %s", os.path.join(output, "sweep.png"))
        logger.info("results: %s", os.path.abspath(os.path.join(output, "sweep.csv")))
        return status, output

    return run_command("rastp_sweep.py", run, benchmark_argv(args, points, extra, output), "results.md")


if __name__ == "__main__":
    sys.exit(main())
