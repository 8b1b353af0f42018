#!/usr/bin/env python
"""RASTP sweep: prune_layer x keep_ratio x prune_scorer (x keep_ratio_mode) under one budget.

One run of the plugin benchmark (``recbole_semprune.benchmark``): every point is a labelled
variant of RASTP (``--models=unpruned=RASTP,rastp-p1-k0_25-fixed=RASTP,...`` with
``--LABEL.prune_layer=...``), each in a fresh worker process with the same dataset, split,
seed, budget and evaluated users, and a first, unpruned point (``prune_scorer=none``, i.e.
TIGER) is the baseline the speed-ups are measured against. Writes

    <output>/sweep.csv    one row per point: settings, cost, speed-up, kept tokens, metrics
    <output>/sweep.png    speed-up vs accuracy (needs matplotlib; skipped with a message)
    <output>/results.*    the benchmark's own tables; <output>/<point>/ its worker log

Example (the full grid; docs/rastp.md runs the ``--design=star`` subset)::

    python scripts/rastp_sweep.py --data_path=../shared/datasets --dataset=amazon-beauty \\
        --prune_layers=1,2,3 --keep_ratios=0.25,0.3333,0.5 \\
        --scorers=rastp,attention,saliency_l1,random --max_steps=300 --eval_max_users=2000 \\
        --threads=1

Extra ``--KEY=VALUE`` arguments go to every point (as on the benchmark's command line).
"""

import argparse
import datetime
import itertools
import logging
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from recbole_semprune.benchmark import BenchmarkError, report, run_benchmark  # noqa: E402
from recbole_semprune.benchmark.common import cli_logging  # noqa: E402

logger = logging.getLogger("rastp_sweep")

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
    parser = argparse.ArgumentParser(
        description="Sweep RASTP settings with recbole_semprune.benchmark; CSV + PNG.",
        epilog="Any other --KEY=VALUE is a config key for every run, e.g. --n_layers=4.",
    )
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--prune_layers", type=_list(int), default=[1, 2, 3])
    parser.add_argument("--keep_ratios", type=_list(float), default=[0.25, 0.3333, 0.5])
    parser.add_argument("--scorers", type=_list(str),
                        default=["rastp", "attention", "saliency_l1", "random"])
    parser.add_argument("--keep_ratio_modes", type=_list(str), default=["fixed"])
    parser.add_argument(
        "--design", choices=["grid", "star"], default="grid",
        help="grid: every combination; star: one factor at a time around the centre (the "
             "first value of each list), i.e. 1 + sum(len(list) - 1) points",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max_steps", type=int, help="optimisation steps per point (default 300)")
    budget.add_argument("--epochs", type=int, help="full epochs per point")
    parser.add_argument("--eval_max_users", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--valid", action="store_true", help="also report validation metrics")
    parser.add_argument("--metric", default="ndcg@10", help="accuracy axis of the plot")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the points that finished in --output with the same settings "
                             "(the benchmark's --resume); rewrites the CSV and the plot")
    parser.add_argument("--output", default=None,
                        help="output folder (default bench_out/rastp-sweep-<dataset>-<time>)")
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
    """Speed-up (x, ``speedup``: CPU seconds by default) vs ``metric`` (y): colour = scorer,
    marker = prune_layer, label = ratio."""
    plt = report.pyplot(path)
    if plt is None:
        return False
    ok = [r for r in rows if r.get("status") == "ok" and r.get(speedup) is not None
          and r.get(metric) is not None]
    if not ok:
        logger.warning("no finished point has %s: %s skipped", metric, path)
        return False
    scorers = sorted({r["prune_scorer"] for r in ok if r["prune_scorer"] != "none"})
    layers = sorted({r["prune_layer"] for r in ok if r["prune_layer"] != ""})
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(scorers)}
    markers = {layer: "osD^v<>ph"[i % 9] for i, layer in enumerate(layers)}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for row in ok:
        if row["prune_scorer"] == "none":
            ax.axhline(row[metric], color="grey", linestyle="--", linewidth=1)
            ax.scatter([1.0], [row[metric]], color="black", marker="*", s=120, zorder=3)
            continue
        ax.scatter([row[speedup]], [row[metric]], color=colors[row["prune_scorer"]],
                   marker=markers[row["prune_layer"]], s=45, zorder=3)
        ax.annotate(f"{row['keep_ratio']:g}", (row[speedup], row[metric]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    handles = [plt.Line2D([], [], color="black", marker="*", linestyle="", label="unpruned")]
    handles += [plt.Line2D([], [], color=colors[s], marker="o", linestyle="", label=s)
                for s in scorers]
    handles += [plt.Line2D([], [], color="grey", marker=markers[layer], linestyle="",
                           label=f"prune_layer {layer}") for layer in layers]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("training speed-up vs unpruned (CPU seconds/step ratio); labels: keep_ratio")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    report.save_figure(plt, fig, path)
    return True


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not re.match(r"^--[A-Za-z_][\w.-]*=", a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config keys are --key=value)")
    clash = [a for a in extra if a.split("=", 1)[0].lstrip("-") in SETTINGS]
    if clash:
        parser.error(f"{' '.join(clash)}: the sweep sets these keys itself")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    now = datetime.datetime.now()
    output = args.output or os.path.join("bench_out", f"rastp-sweep-{args.dataset}-{now:%Y%m%d-%H%M%S}")
    points = grid(args)
    try:
        with cli_logging():
            status, _, rows = run_benchmark(benchmark_argv(args, points, extra, output))
    except BenchmarkError as error:
        parser.error(str(error))
    rows = sweep_rows(points, rows)
    write_csv(os.path.join(output, "sweep.csv"), rows)
    budget = f"epochs={args.epochs}" if args.epochs else f"max_steps={args.max_steps or 300}"
    title = f"RASTP sweep, {args.dataset}, {budget}, eval users: {args.eval_max_users or 'all'}"
    if write_plot(os.path.join(output, "sweep.png"), rows, args.metric, title):
        logger.info("plot: %s", os.path.join(output, "sweep.png"))
    logger.info("results: %s", os.path.abspath(os.path.join(output, "sweep.csv")))
    return status


if __name__ == "__main__":
    sys.exit(main())
