#!/usr/bin/env python
"""RASTP sweep: prune_layer x keep_ratio x prune_scorer (x keep_ratio_mode) under one budget,
as one benchmark run of labelled RASTP variants with an unpruned baseline (docs/rastp.md).
Writes <output>/sweep.csv, <output>/sweep.png and the benchmark's own results.*.

    python scripts/rastp_sweep.py --data_path=../shared/datasets --dataset=amazon-beauty \
        --prune_layers=1,2,3 --keep_ratios=0.25,0.3333,0.5 --max_steps=300 --threads=1
"""

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.benchmark import report, run_benchmark  # noqa: E402
from recbole_semprune.benchmark.common import logger, read_json, run_command, start  # noqa: E402

# config key: (flag of its values, their type, default values)
FACTORS = {"prune_layer": ("prune_layers", int, "1,2,3"),
           "keep_ratio": ("keep_ratios", float, "0.25,0.3333,0.5"),
           "prune_scorer": ("scorers", str, "rastp,attention,saliency_l1,random"),
           "keep_ratio_mode": ("keep_ratio_modes", str, "fixed")}
# speed-up column: the unpruned point's figure / this point's = 1 / the benchmark's ratio
SPEEDUPS = {"train_speedup": "train_seconds_per_step_ratio", "eval_speedup": "eval_seconds_ratio",
            "train_cpu_speedup": "train_cpu_seconds_per_step_ratio"}


def _list(cast):
    """argparse type: comma-separated values of type ``cast``."""
    def parse(text):
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))

    return parse


def parse_args(argv):
    """The sweep's own flags; every other flag goes to the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="Any other flag goes to the benchmark (docs/benchmarks.md): --max_steps (default "
        "300) or --epochs, --eval_max_users, --threads, --valid, --resume (reuse the finished "
        "points of --output) and --KEY=VALUE, a config key for every point.")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--data_path", default="../shared/datasets")
    for flag, cast, default in FACTORS.values():
        parser.add_argument(f"--{flag}", type=_list(cast), default=default)
    parser.add_argument("--design", choices=["grid", "star"], default="grid", help="grid: every "
                        "combination; star: one factor at a time around the first values")
    parser.add_argument("--metric", default="ndcg@10", help="accuracy axis of the plot")
    parser.add_argument("--output", default=None,
                        help="default bench_out/rastp-sweep-<dataset>-<time>")
    args, extra = parser.parse_known_args(argv)
    clash = [a for a in extra if a.split("=", 1)[0].lstrip("-") in FACTORS]
    if clash:
        parser.error(f"{' '.join(clash)}: the sweep sets these keys itself")
    if not any(a.split("=", 1)[0] in ("--epochs", "--max_steps") for a in extra):
        extra.append("--max_steps=300")
    return args, extra


def grid(args):
    """The points: the unpruned baseline first, then every combination (``--design=grid``) or
    the centre and its one-factor variations (``--design=star``)."""
    factors = {key: getattr(args, flag) for key, (flag, _, _) in FACTORS.items()}
    if args.design == "grid":
        combos = [dict(zip(factors, values)) for values in itertools.product(*factors.values())]
    else:
        centre = {key: values[0] for key, values in factors.items()}
        combos = [centre] + [dict(centre, **{key: value}) for key, values in factors.items()
                             for value in values[1:]]
    return [{"prune_scorer": "none"}] + combos


def point_name(point):
    """The point's benchmark label (a label has no dot: keep_ratio 0.25 is ``k0_25``)."""
    if point["prune_scorer"] == "none":
        return "unpruned"
    ratio = f"{point['keep_ratio']:g}".replace(".", "_")
    return f"{point['prune_scorer']}-p{point['prune_layer']}-k{ratio}-{point['keep_ratio_mode']}"


def variant_flags(points):
    """The benchmark flags that run ``points`` as labelled RASTP variants, ``unpruned`` the
    baseline."""
    return ["--models=" + ",".join(f"{point_name(p)}=RASTP" for p in points),
            "--baseline=unpruned"] + [f"--{point_name(p)}.{key}={value}"
                                      for p in points for key, value in p.items()]


def write_sweep(output, args, points, rows, meta):
    """sweep.csv (one row per point: its settings, the speed-ups against the unpruned point,
    then the benchmark's results.csv columns) and sweep.png."""
    names = ["point", *FACTORS, *SPEEDUPS] + report.csv_columns(rows)[1:]  # [0]: model = point
    rows = [{"point": row["model"], **{key: point.get(key, "") for key in FACTORS}, **row, **{
        speedup: 1 / row[ratio] if row.get(ratio) else None for speedup, ratio in SPEEDUPS.items()
    }} for point, row in zip(points, report.flat_rows(rows, "unpruned"))]
    report.write_csv(os.path.join(output, "sweep.csv"), names, rows)
    title = (f"RASTP sweep, {args.dataset}, {meta['budget']['mode']}={meta['budget']['value']}, "
             f"eval users: {meta['eval_max_users'] or 'all'}")
    write_plot(os.path.join(output, "sweep.png"), rows, args.metric, title)


def write_plot(path, rows, metric, title, speedup="train_cpu_speedup"):
    """Speed-up (x, CPU seconds by default) vs ``metric``: one colour per scorer, labels
    prune_layer / keep_ratio, the unpruned point a star."""
    ok = [r for r in rows
          if r.get("status") == "ok" and r.get(speedup) and r.get(metric) is not None]
    if not ok:
        logger.warning("no finished point has %s: %s skipped", metric, path)
        return False

    def draw(ax):
        for scorer in dict.fromkeys(r["prune_scorer"] for r in ok):
            mine, star = [r for r in ok if r["prune_scorer"] == scorer], scorer == "none"
            ax.scatter([r[speedup] for r in mine], [r[metric] for r in mine], s=120 if star else 45,
                       marker="*" if star else "o", zorder=3, label="unpruned" if star else scorer)
            for r in mine if not star else ():
                ax.annotate(f"p{r['prune_layer']}/{r['keep_ratio']:g}", (r[speedup], r[metric]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=8)
        ax.set(xlabel="training speed-up vs unpruned (CPU seconds/step ratio); labels: "
               "prune_layer/keep_ratio", ylabel=f"test {metric}", title=title)
        ax.grid(alpha=0.3)

    return report.plot(path, draw, figsize=(7.5, 5))


def main(argv=None):
    args, extra = parse_args(argv)
    output = start("", [], args.output, f"rastp-sweep-{args.dataset}")[0]
    points = grid(args)

    def run(argv):
        status, _, rows = run_benchmark(argv)
        write_sweep(output, args, points, rows,
                    read_json(os.path.join(output, "results.json"))["meta"])
        logger.info("results: %s", os.path.abspath(os.path.join(output, "sweep.csv")))
        return status, output

    flags = variant_flags(points)  # --models, --baseline, then each point's keys
    return run_command("rastp_sweep.py", run, [
        f"--dataset={args.dataset}", f"--data_path={args.data_path}", *extra, *flags[:2],
        f"--output={output}", *flags[2:]], "results.md")


if __name__ == "__main__":
    sys.exit(main())
