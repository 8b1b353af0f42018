"""``python -m recbole_semprune.benchmark``: several models, one protocol, one table
(docs/benchmarks.md). Each model runs in a fresh process (:mod:`.worker`), one after another;
this process checks the arguments, starts the workers, collects their JSON, writes the tables."""

import os
import sys
import traceback

from recbole_semprune.benchmark import report
from recbole_semprune.benchmark.common import (
    logger, model_parser, model_specs, parse_models, positive_int, preflight, read_json, remove,
    run_command, run_module, start, write_json, write_text,
)

# Keys every model must share (one protocol), and keys the benchmark sets itself.
PROTOCOL_KEYS = ("dataset", "data_path", "seed", "eval_args", "metrics", "topk", "reproducibility",
                 "exclude_seen")
BENCHMARK_KEYS = {
    "model": "use --models", "epochs": "use --epochs or --max_steps",
    "max_steps": "use --epochs or --max_steps", "eval_step": "--valid validates after every epoch",
    "stopping_step": "a fixed budget never stops early",
}
# Config values copied into each result (besides the overridden keys), for the record.
REPORT_KEYS = ["seed", "data_path", "train_batch_size", "eval_batch_size", "learning_rate",
               "MAX_ITEM_LIST_LENGTH", "exclude_seen", "hidden_size", "n_layers", "n_heads"]
PROG = "python -m recbole_semprune.benchmark"


def parse_args(argv):
    """``(namespace, global_overrides, {model: overrides})``; status 2 (argparse's) on bad flags."""
    parser = model_parser(
        PROG, "Train and evaluate several models under one protocol; results.csv / .md.",
        epilog="Config keys: --KEY=VALUE (every model), --LABEL.KEY=VALUE (one model; not "
        f"{', '.join(PROTOCOL_KEYS)}). Latency: {PROG}.latency. See docs/benchmarks.md.")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=positive_int, metavar="N", help="train N full epochs")
    budget.add_argument("--max_steps", type=positive_int, metavar="N",
                        help="train exactly N optimisation steps")
    parser.add_argument("--eval_max_users", type=positive_int, metavar="N",
                        help="evaluate only the first N users of the test loader")
    parser.add_argument("--valid", action="store_true", help="also validate after each epoch")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: bench_out/<dataset>-<timestamp>)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished models of --output, continue an interrupted one")
    parser.add_argument("--in_process", action="store_true",
                        help="run the models in this process (tests, debugging)")
    args, extra = parser.parse_known_args(argv)
    if any(arg.split("=", 1)[0].startswith("--latency") for arg in extra):
        parser.error(f"latency has its own command: {PROG}.latency (the same model flags; "
                     "--output of this run appends it to results.md)")
    if args.resume and not args.output:
        parser.error("--resume needs the --output folder of the run to resume")
    return (args, *parse_models(parser, args, extra, BENCHMARK_KEYS, PROTOCOL_KEYS))


def run_worker(spec, model_dir, in_process=False):
    """Run one model in a fresh interpreter (or this process: ``in_process``), its output in
    ``worker.log``; its result, or a failed row (with the training figures, if it trained)."""
    from recbole_semprune.benchmark.worker import TRAINED_FILE, execute

    log_path, reason = os.path.join(model_dir, "worker.log"), None
    if in_process:
        try:
            execute(spec)
        except Exception as error:  # reported like a crashed worker; the others go on
            reason = f"{type(error).__name__}: {error}"
            write_text(log_path, traceback.format_exc())
    else:
        code = run_module(["recbole_semprune.benchmark.worker", os.path.join(
            model_dir, "spec.json")], log_path, prefix=f"[{spec['model']}] ")
        if code:
            reason = (f"worker exited with status {code}" if code > 0 else f"worker killed by "
                      f"signal {-code}" + (" (out of memory?)" if code == -9 else ""))
    result = None if reason else read_json(spec["result_path"])
    if result:
        return result
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = "\n".join(f.read().rstrip("\n").splitlines()[-25:])
    trained = read_json(os.path.join(model_dir, TRAINED_FILE))
    reason = (reason or "worker wrote no readable result") + (
        " (after training, during evaluation)" if trained else "")
    logger.error("%s failed: %s\n%s", spec["model"], reason, tail)
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    reason += "" if last in reason else f": {last}"
    return dict(trained or {}, model=spec["model"], status="failed", error=reason, output_tail=tail)


def run_benchmark(argv):
    """Run the benchmark of ``argv``; returns ``(exit status, output folder, rows)``."""
    import recbole
    import torch

    import recbole_semprune
    from recbole_semprune.benchmark.worker import SPEC_VERSION, TRAINED_FILE

    args, global_overrides, model_overrides = parse_args(argv)
    output, meta = start(PROG, argv, args.output, args.dataset)
    steps = args.max_steps or args.epochs
    budget = {"epochs": steps, "max_steps": args.max_steps, "eval_step": 1,
              "stopping_step": steps + 1}  # a fixed budget: never stops early
    specs = model_specs(
        args, {**global_overrides, **budget}, model_overrides, version=SPEC_VERSION,
        budget={"mode": "max_steps" if args.max_steps else "epochs", "value": steps},
        eval_max_users=args.eval_max_users, valid=bool(args.valid), threads=args.threads,
        report_keys=REPORT_KEYS, init_logger=not args.in_process)
    for spec in specs:  # its result, and the trainer's resume state
        folder = os.path.abspath(os.path.join(output, spec["model"]))
        spec.update(result_path=os.path.join(folder, "result.json"),
                    last_checkpoint=os.path.join(folder, "last.pth"))
    first = preflight(args, specs)
    os.makedirs(output, exist_ok=True)
    meta.update(dataset=args.dataset, data_path=os.path.abspath(first["data_path"]),
                models=args.models, baseline=args.baseline, budget=specs[0]["budget"],
                eval_max_users=args.eval_max_users, exclude_seen=first["exclude_seen"],
                valid=args.valid, threads=args.threads, seed=first["seed"],
                device=str(first["device"]), config_files=args.config_files,
                global_overrides=global_overrides, model_overrides=model_overrides,
                in_process=args.in_process, torch_version=torch.__version__,
                recbole_version=recbole.__version__, python_version=sys.version.split()[0],
                recbole_semprune_version=recbole_semprune.__version__)
    rows = []
    for index, spec in enumerate(specs, 1):
        model, model_dir = spec["model"], os.path.join(output, spec["model"])
        same = args.resume and read_json(os.path.join(model_dir, "spec.json")) == spec
        row = read_json(spec["result_path"]) if same else None
        if (row or {}).get("status") == "ok":
            logger.info("[%d/%d] %s: finished in an earlier run with the same settings, reused",
                        index, len(specs), model)
        else:
            resumable = same and os.path.exists(spec["last_checkpoint"])
            os.makedirs(model_dir, exist_ok=True)
            write_json(os.path.join(model_dir, "spec.json"), spec)
            write_json(os.path.join(model_dir, "overrides.json"), {
                "config_files": spec["config_files"], "global": global_overrides,
                "model": model_overrides[model], "config_dict": spec["config_dict"]})
            remove([spec["result_path"], os.path.join(model_dir, TRAINED_FILE)] + (
                [] if resumable else [spec["last_checkpoint"]]))
            logger.info("[%d/%d] %s%s", index, len(specs), model,
                        ": resumed from its last completed epoch" if resumable else "")
            row = run_worker(spec, model_dir, args.in_process)
        rows.append(dict(row, config_overrides=spec["config_dict"]))
        report.write_tables(output, meta, rows)  # after every model: a run stopped early keeps them
    report.write_plots(output, meta, rows)
    failed = [r["model"] for r in rows if r.get("status") != "ok"]
    if failed:
        logger.error("failed: %s (see %s/<model>/worker.log)", ", ".join(failed), output)
    logger.info("results: %s", os.path.abspath(output))
    return (1 if failed else 0), output, rows


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 a model failed, 2 usage)."""
    return run_command(PROG, lambda argv: run_benchmark(argv)[:2], argv, "results.md")
