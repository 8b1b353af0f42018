"""Results mode: models trained to early stopping under one protocol, several seeds each
(docs/results.md). Each (model, seed) is one resumable ``run_recbole_semprune`` in a fresh
process in ``<output>/<model>/seed-<seed>/``; the tables are rewritten after every run."""

import csv
import glob
import json
import math
import os
import sys

from recbole_semprune.benchmark import report
from recbole_semprune.benchmark.common import (
    model_parser, parse_models, read_json, remove, run_module, write_json, write_text,
)

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
MASKS = ("off", "on")
USER_ERROR_EXIT = 2  # a run stopped by what the user gave (errors.UserInputError)
FIGURES = ("epochs", "best_epoch", "seconds_to_best", "cpu_seconds_to_best", "seconds_per_epoch",
           "cpu_seconds_per_epoch", "peak_memory_mb")
SHOWN = FIGURES[1:]  # in results.md, headed and written as report.COLUMNS says
RESULT_FILE, POSITIONS_FILE, SPEC_FILE = "result.json", "positions.csv", "spec.json"
PROG = "python -m recbole_semprune.benchmark.results"


def parse_args(argv):
    parser = model_parser(PROG, __doc__.split("\n")[0])
    parser.add_argument("--seeds", default="2020,2021,2022",
                        help="seeds of every model (--MODEL.seeds: of one)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--only", default=None, help="run only these models (the tables keep all)")
    parser.add_argument("--compare_to", default="", metavar="LABELS",
                        help="also pair every model with these (e.g. SASRec), a table each")
    args, extra = parser.parse_known_args(argv)
    shared, overrides = parse_models(parser, args, extra,
                                     {"seed": "seeds are set with --seeds or --MODEL.seeds"})
    seeds = {label: overrides[label].pop("seeds", shared.get("seeds", args.seeds))
             for label in args.models}
    shared.pop("seeds", None)
    try:
        args.seeds = {label: [int(s) for s in value.split(",") if s.strip()]
                      for label, value in seeds.items()}
    except ValueError:
        parser.error("seeds are integers separated by commas, e.g. --seeds=2020,2021,2022")
    args.only = args.models if args.only is None else [m.strip() for m in args.only.split(",")]
    args.compare_to = [m.strip() for m in args.compare_to.split(",") if m.strip()]
    for flag, names in (("--only", args.only), ("--compare_to", args.compare_to)):
        unknown = sorted(set(names) - set(args.models))
        if unknown:
            parser.error(f"{flag} names {', '.join(unknown)}, not in --models")
    if args.baseline in args.compare_to:
        parser.error(f"--compare_to names the baseline {args.baseline}: its table is always there")
    return args, shared, overrides


def run_spec(args, label, seed, shared, overrides):
    """What one run is: everything that changes its result (compared on resume)."""
    config_dict = {**shared, **overrides[label]}
    if args.data_path is not None:
        config_dict["data_path"] = os.path.abspath(args.data_path)
    files = {"config_files": [os.path.abspath(f) for f in args.config_files]}
    return {"model": label, "model_class": args.model_classes[label], "dataset": args.dataset,
            "seed": seed, "config": config_dict, **(files if args.config_files else {})}


def last_error(folder):
    """The last ``error:`` line of a run's ``run.log``."""
    with open(os.path.join(folder, "run.log"), encoding="utf-8", errors="replace") as f:
        errors = [line.strip() for line in f if line.startswith("error: ")]
    return errors[-1] if errors else f"see {folder}/run.log"


def run_one(spec, folder, threads=None):
    """Train, test and rank one (model, seed) in ``folder`` (this process's working folder):
    writes ``positions.csv`` (each test user's target position with the mask off and on, and
    how often that target occurs in training), then ``result.json``."""
    import torch
    from recbole.utils import init_seed

    from recbole_semprune.analysis import rank_targets, topk_list, training_counts
    from recbole_semprune.quick_start import load_data_and_model, run_recbole_semprune

    if threads:
        torch.set_num_threads(threads)
    os.chdir(folder)
    saved = os.path.join(folder, "saved")
    resume = bool(glob.glob(os.path.join(glob.escape(saved), "*-last.pth")))
    # values as on RecBole's command line: its Config reads "5" as 5, "[5,10]" as a list
    config_dict = {**spec["config"], "seed": spec["seed"], "checkpoint_dir": saved,
                   "resume": resume, "show_progress": False}
    sys.argv = [sys.argv[0]]  # RecBole's Config reads the command line
    result = run_recbole_semprune(spec["model_class"], spec["dataset"], spec.get("config_files"),
                                  config_dict)
    config, model, dataset, _, valid_data, test_data = load_data_and_model(
        result["saved_model_file"])
    rows = test_data._dataset.inter_feat
    counts = training_counts(dataset, valid_data, test_data)[rows[dataset.iid_field]]
    target_count = dict(zip(rows[dataset.uid_field].tolist(), counts.tolist()))
    columns = {}
    for mask in MASKS:
        init_seed(config["seed"], config["reproducibility"])
        position, _, users = rank_targets(model, config, test_data, mask == "on")
        columns[mask] = dict(zip(users.tolist(), position.tolist()))
    write_text(POSITIONS_FILE, "user_id\tposition_off\tposition_on\ttarget_count\n" + "".join(
        f"{u}\t{columns['off'][u]}\t{columns['on'][u]}\t{target_count[u]}\n"
        for u in sorted(columns["off"])))
    write_json(RESULT_FILE, {
        "spec": spec, "test_result": {k: float(v) for k, v in result["test_result"].items()},
        "best_valid_result": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "kmax": max(topk_list(config)), "valid_metric": str(config["valid_metric"]).lower(),
        **{key: result[key] for key in ("epoch_stats", "valid_stats") if key in result},
        "settings": run_settings(config),
    })


def run_settings(config):
    """The run's value of every plugin setting (each key of its yaml defaults), as JSON values.

    ``spec.json`` holds only what the command set; this holds what the run used, defaults
    included, so runs made before and after a default changed can be told apart
    (:func:`mixed_settings`)."""
    from recbole_semprune.config import plugin_default_files, read_config_file

    keys = {key for file in plugin_default_files(config["model"]) for key in read_config_file(file)}
    return {key: json.loads(json.dumps(config[key], default=str))
            for key in sorted(keys) if key in config.final_config_dict}


def mixed_settings(runs):
    """``[(label, key, {value: [seeds]})]``: the settings in which runs of one label differ
    (runs whose result.json records no settings, written before they were, are left out; a
    key added to the library after a run counts at the value that keeps the earlier
    behaviour, ``checkpoint.earlier_behaviour``)."""
    from recbole_semprune.checkpoint import earlier_behaviour
    from recbole_semprune.config import plugin_default_files, read_config_file

    mixed = []
    for label, seeds in runs.items():
        recorded = {seed: run[0]["settings"] for seed, run in seeds.items() if "settings" in run[0]}
        model = next(iter(seeds.values()))[0]["spec"].get("model_class", label) if seeds else label
        defaults = {key: value for file in plugin_default_files(model)
                    for key, value in read_config_file(file).items()}
        for key in sorted({key for settings in recorded.values() for key in settings}):
            values = {}
            for seed, settings in sorted(recorded.items()):
                value = settings[key] if key in settings else earlier_behaviour(
                    key, defaults.get(key))
                values.setdefault(json.dumps(value), []).append(seed)
            if len(values) > 1:
                mixed.append((label, key, values))
    return mixed


def summarise(result, positions):
    """One run's figures: test metrics with the mask off / on (from the per-user positions, the
    figures RecBole's evaluator averages), the best validation epoch, training epochs and
    seconds up to it, wall and CPU seconds per epoch, peak memory."""
    from recbole_semprune.analysis import per_user_metrics

    figures = {}
    for mask in MASKS:
        values = per_user_metrics(positions[mask], [5, 10])
        figures.update({f"{name}_mask_{mask}": float(values[name].mean()) for name in METRICS})
    epochs = result.get("epoch_stats") or []
    valids = result.get("valid_stats") or []
    metric = result.get("valid_metric")
    # RecBole's early stopping takes a validation that equals the best so far as the new best
    # (``value >= best``) and saves its checkpoint: the last epoch with the best score is tested
    best = None
    for valid in (v for v in valids if metric in v["result"]):
        if best is None or float(valid["result"][metric]) >= float(best["result"][metric]):
            best = valid
    best_epoch = None if best is None else best["epoch"]
    seconds = [e["seconds"] for e in epochs]
    cpu = [e.get("cpu_seconds", math.nan) for e in epochs]  # NaN: a file from before they were
    to_best = [i for i, e in enumerate(epochs)
               if best_epoch is not None and e["epoch"] <= best_epoch]
    figures.update(epochs=len(epochs), best_epoch=best_epoch,
                   seconds_to_best=sum(seconds[i] for i in to_best),
                   cpu_seconds_to_best=sum(cpu[i] for i in to_best),
                   seconds_per_epoch=sum(seconds) / len(seconds) if seconds else math.nan,
                   cpu_seconds_per_epoch=sum(cpu) / len(cpu) if cpu else math.nan,
                   peak_memory_mb=max((e["peak_memory_mb"] for e in epochs), default=math.nan))
    return figures


def read_positions(path):
    """``(user ids, {mask: their target's positions})`` of a run's positions.csv, the dict also
    holding ``target_count`` (the target's count in training) where the file has it."""
    import torch

    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = {mask: f"position_{mask}" for mask in MASKS}
    if rows and "target_count" in rows[0]:
        columns["target_count"] = "target_count"
    return torch.tensor([int(r["user_id"]) for r in rows]), {
        key: torch.tensor([int(r[name]) for r in rows]) for key, name in columns.items()}


def mean_se(values):
    """Mean and standard error of the finite ``values`` (NaN where there are too few)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
    return mean, se


def collect(output, labels):
    """``{label: {seed: (result, users, positions)}}`` of the finished runs."""
    runs = {}
    for label in labels:
        runs[label] = {}
        folder = os.path.join(output, label)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            result = read_json(os.path.join(folder, name, RESULT_FILE))
            positions = os.path.join(folder, name, POSITIONS_FILE)
            if result is not None and os.path.isfile(positions):
                runs[label][result["spec"]["seed"]] = (result, *read_positions(positions))
    return runs


def model_rows(runs):
    """Per model: the mean and standard error of every figure over its seeds."""
    rows = []
    for label, seeds in runs.items():
        figures = [summarise(result, positions) for result, _, positions in seeds.values()]
        row = {"model": label, "seeds": len(figures)}
        for key in [f"{m}_mask_{mask}" for mask in MASKS for m in METRICS] + list(FIGURES):
            row[key], row[key + "_se"] = mean_se([f[key] for f in figures])
        rows.append(row)
    return rows


def paired_rows(runs, baseline):
    """Per model: its runs paired with the baseline's of the same seed, pooled over the seeds."""
    import torch

    from recbole_semprune.analysis import per_user_metrics, pooled_difference

    rows = []
    for label, seeds in runs.items():
        common = [seed for seed in seeds if seed in runs[baseline]]
        for mask in MASKS if label != baseline and common else ():
            pairs = []
            for seed in common:
                (_, users_a, pos_a), (_, users_b, pos_b) = seeds[seed], runs[baseline][seed]
                if not torch.equal(users_a, users_b):
                    raise ValueError(
                        f"{label} and {baseline} (seed {seed}) ranked other test users")
                pairs.append([per_user_metrics(pos[mask], [5, 10]) for pos in (pos_a, pos_b)])
            rows += [{"model": label, "baseline": baseline, "mask": mask, "seeds": len(common),
                      "metric": metric, "model_value": a, "baseline_value": b,
                      "difference": diff, "se": se}
                     for metric, a, b, diff, se in pooled_difference(pairs)
                     if metric in ("ndcg@10", "recall@10")]
    return rows


def count_rows(runs, baseline):
    """Test NDCG@10 per model and mask in groups of users by how often their target occurs in
    training (five groups of about equal size, bounds from the baseline's first run): ``(group
    names with their users, rows)``; runs whose positions.csv has no counts (written before the
    column existed) are left out."""
    from recbole_semprune.analysis import equal_groups, metrics_by_group

    counted = {label: [run[2] for run in seeds.values() if "target_count" in run[2]]
               for label, seeds in runs.items()}
    found = counted.get(baseline) or [p for label in counted for p in counted[label]]
    bounds = equal_groups(found[0]["target_count"]) if found else []
    if not bounds:
        return [], []
    rows = []
    for label, seeds in counted.items():
        for mask in MASKS if seeds else ():
            groups = [metrics_by_group(positions[mask], positions["target_count"], bounds, [10],
                                       lowest=0) for positions in seeds]
            row = {"model": label, "mask": mask, "seeds": len(groups)}
            for number, (name, _, _) in enumerate(groups[0]):
                row[name] = mean_se([g[number][2]["ndcg@10"] for g in groups])
            rows.append(row)
    names = [f"{name} ({users:,} users)" for name, users, _ in metrics_by_group(
        found[0]["off"], found[0]["target_count"], bounds, [10], lowest=0)]
    return names, rows


def _cell(mean, se, digits=4):
    """``mean ± se`` (a dash when there is no figure)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {se:.{digits}f}" if math.isfinite(se) else "")


def write_tables(output, args):
    """results.md, results.csv, results.json and results.png of the runs finished so far."""
    from recbole_semprune.analysis import difference_cells

    runs = collect(output, args.models)
    rows, against = model_rows(runs), [args.baseline, *args.compare_to]
    paired = {baseline: paired_rows(runs, baseline) for baseline in against}
    lines = [f"# Results: {args.dataset}", "",
             f"- command: `python -m recbole_semprune.benchmark.results {' '.join(args.argv)}`",
             "- every run trained to RecBole's early stopping on the validation metric and tested "
             "on its best epoch; mean ± standard error over the seeds run so far", ""]
    names = ["model", "seeds", *METRICS, *SHOWN]
    heads = [report.COLUMNS[n].head if n in SHOWN else n for n in names]
    for mask, title in zip(MASKS, ("history mask off (the protocol)",
                                   "history mask on (exclude_seen: no history item ranked)")):
        def cells(row):
            return [row["model"], str(row["seeds"])] + [
                _cell(row[f"{m}_mask_{mask}"], row[f"{m}_mask_{mask}_se"]) for m in METRICS] + [
                _cell(row[f], row[f + "_se"], int(report.COLUMNS[f].fmt[0])) for f in SHOWN]

        lines += [f"## Test, {title}", "", report.markdown_table(names, rows, cells, heads), ""]
    for baseline in against:
        lines += [f"## Paired per-user differences against {baseline}", "",
                  "Each user's figure averaged over the seeds both ran, then the mean difference "
                  "and its standard error over the users.", "",
                  report.markdown_table(
                      ["model", "mask", "seeds", "metric", "a", "b", "d", "se", "r"],
                      paired[baseline], lambda r: [
                          r["model"], r["mask"], str(r["seeds"]), r["metric"], *difference_cells(
                              r["model_value"], r["baseline_value"], r["difference"], r["se"])],
                      ["model", "mask", "seeds", "metric", "model", baseline, "difference", "SE",
                       "diff / SE"], text=("mask", "metric")), ""]
    lines.pop()  # the next section opens with its own blank line
    groups, by_count = count_rows(runs, args.baseline)
    if by_count:
        keys = [name.split(" ")[0] for name in groups]
        lines += ["", "## Test NDCG@10 by the target's count in training", "",
                  "Test users grouped by how often their target item occurs in the training "
                  "interactions (columns: the count, the users), mean ± standard error over the "
                  "seeds: where a model's accuracy comes from, popular or rare targets (runs "
                  "written before the counts were recorded are left out).", "",
                  report.markdown_table(
                      ["model", "mask", "seeds", *keys], by_count,
                      lambda r: [r["model"], r["mask"], str(r["seeds"])] + [
                          _cell(*r[k]) for k in keys], ["model", "mask", "seeds", *groups],
                      text=("mask",))]
    mixed = mixed_settings(runs)
    if mixed:
        lines += ["", "## Warning: seeds of one model ran with other settings", "",
                  "A default may have changed between the runs; their mean mixes two setups.", ""]
        lines += [f"- {label}: `{key}` " + "; ".join(
            f"{value} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            for value, seeds in values.items()) for label, key, values in mixed]
    write_text(os.path.join(output, "results.md"), "\n".join(lines) + "\n")
    if rows:
        report.write_csv(os.path.join(output, "results.csv"), list(rows[0]), rows)
    write_json(os.path.join(output, "results.json"), {
        "rows": rows, "paired": [row for baseline in against for row in paired[baseline]],
        "by_target_count": by_count})
    finished = [r for r in rows if math.isfinite(r["ndcg@10_mask_off"])]
    # CPU hours where every run has them: wall hours are inflated by other jobs on the machine
    cpu = all(math.isfinite(r["cpu_seconds_to_best"]) for r in finished)
    key = "cpu_seconds_to_best" if cpu else "seconds_to_best"
    shown = [(r["model"], r[key] / 3600, r["ndcg@10_mask_off"], r["ndcg@10_mask_off_se"])
             for r in finished]

    def draw(ax):
        ax.errorbar([p[1] for p in shown], [p[2] for p in shown], fmt="none", capsize=3,
                    yerr=[0 if math.isnan(p[3]) else p[3] for p in shown])
        report.scatter(ax, [p[:3] for p in shown], f"training {'CPU ' if cpu else ''}hours to "
                       "the best validation epoch", "test NDCG@10 (mask off)")

    if shown:
        report.plot(os.path.join(output, "results.png"), draw, figsize=(6, 4))
    return rows, paired


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run"]:  # one run, in its own process (see run_one)
        from recbole_semprune.errors import UserInputError

        spec = read_json(argv[1])
        try:
            run_one(spec, os.path.dirname(os.path.abspath(argv[1])),
                    int(argv[2]) if argv[2:] else None)
        except UserInputError as error:  # the command's settings or data, not this run alone
            print(f"error: {error}", flush=True)
            return USER_ERROR_EXIT
        return 0
    args, shared, overrides = parse_args(argv)
    args.argv = argv
    os.makedirs(args.output, exist_ok=True)
    status = 0
    # the first seed of every model, then the second ...: comparable figures come early
    rounds = max(len(args.seeds[label]) for label in args.only)
    plan = [(label, args.seeds[label][i]) for i in range(rounds) for label in args.only
            if i < len(args.seeds[label])]
    for label, seed in plan:
        folder = os.path.join(args.output, label, f"seed-{seed}")
        os.makedirs(folder, exist_ok=True)
        spec = run_spec(args, label, seed, shared, overrides)
        done = read_json(os.path.join(folder, RESULT_FILE))
        if done is not None and done["spec"] == spec:
            print(f"[{label} seed {seed}] done", flush=True)
            continue
        old = read_json(os.path.join(folder, SPEC_FILE))
        if old is not None and old != spec:  # other settings: start that run again
            remove([os.path.join(folder, RESULT_FILE), os.path.join(folder, POSITIONS_FILE),
                    *glob.glob(os.path.join(glob.escape(folder), "saved", "*-last.pth"))])
        write_json(os.path.join(folder, SPEC_FILE), spec)
        print(f"[{label} seed {seed}] training (log: {folder}/run.log)", flush=True)
        code = run_module(["recbole_semprune.benchmark.results", "--run", os.path.join(
            os.path.abspath(folder), SPEC_FILE)] + ([str(args.threads)] if args.threads else []),
            os.path.join(folder, "run.log"), mode="a")
        if code == USER_ERROR_EXIT:  # the next runs would meet it too (or start unasked ones)
            print(f"[{label} seed {seed}] stopped, nothing else run: {last_error(folder)}",
                  flush=True)
            status = USER_ERROR_EXIT
            break
        if code:
            status = 1
            print(f"[{label} seed {seed}] failed (exit {code}): see {folder}/run.log", flush=True)
        write_tables(args.output, args)
    write_tables(args.output, args)
    with open(os.path.join(args.output, "results.md"), encoding="utf-8") as f:
        print(f.read())
    return status


if __name__ == "__main__":
    sys.exit(main())
