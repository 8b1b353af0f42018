"""``python -m recbole_semprune.benchmark``: several models, one protocol, one table.

Each model runs in its own fresh process (:mod:`recbole_semprune.benchmark.worker`), one after
another, with the same dataset, split, seed and training budget; this process only checks the
arguments, starts the workers, collects their JSON and writes the tables.
"""

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections import OrderedDict

from recbole_semprune.benchmark import report

logger = logging.getLogger("recbole_semprune.benchmark")

USAGE_EXAMPLES = """\
extra config keys:
  --KEY=VALUE          a RecBole / plugin config key for every model, e.g. --hidden_size=64
  --MODEL.KEY=VALUE    only for MODEL, e.g. --TIGER.n_layers=2 (beats --KEY=VALUE)
  Values are read as on RecBole's command line. Per-model keys may not change the protocol
  (%s).

examples:
  python -m recbole_semprune.benchmark --dataset=ml-100k --models=SASRec,BERT4Rec --max_steps=200
  python -m recbole_semprune.benchmark --dataset=amazon-beauty --data_path=../shared/datasets \\
      --models=SASRec,BERT4Rec --max_steps=200 --eval_max_users=2000 --threads=1

latency mode (recbole_semprune/benchmark/latency.py; with a budget, after the training run):
  --latency  --latency_lengths=50,200,500,1000,2000  --latency_repeats=3  --latency_k=10
"""
# Keys every model must share (one protocol) or that the benchmark sets itself.
PROTOCOL_KEYS = ("dataset", "data_path", "seed", "eval_args", "metrics", "topk", "reproducibility",
                 "exclude_seen")
BENCHMARK_KEYS = {
    "model": "use --models",
    "epochs": "use --epochs or --max_steps",
    "eval_step": "--valid validates after every epoch",
    "stopping_step": "a fixed budget never stops early",
}
# Config values copied into each result (besides the overridden keys), for the record.
REPORT_KEYS = [
    "seed",
    "data_path",
    "train_batch_size",
    "eval_batch_size",
    "learning_rate",
    "MAX_ITEM_LIST_LENGTH",
    "exclude_seen",
    "hidden_size",
    "n_layers",
    "n_heads",
]
OUTPUT_TAIL_LINES = 25
LAST_CHECKPOINT_FILE = "last.pth"
_EXTRA = re.compile(r"^--([A-Za-z_][\w-]*)(?:\.([A-Za-z_][\w-]*))?=(.*)$", re.S)


class BenchmarkError(Exception):
    """Bad arguments or setup, found before any model trains."""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_semprune.benchmark",
        description=(
            "Train and evaluate several models under one protocol, seed and machine, one after "
            "another (each in a fresh process), and write results.csv / results.md."
        ),
        epilog=USAGE_EXAMPLES % ", ".join(PROTOCOL_KEYS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--dataset", required=True, help="dataset name, e.g. ml-100k, amazon-beauty"
    )
    parser.add_argument(
        "--models", required=True,
        help="comma-separated model names (plugin or RecBole), e.g. SASRec,BERT4Rec,TIGER; "
        "LABEL=MODEL runs MODEL under its own name LABEL, so one model can run in several "
        "variants set by --LABEL.KEY=VALUE, e.g. SAP=STAMPSID --SAP.multistep_steps=0",
    )
    parser.add_argument(
        "--data_path", default=None, help="folder holding <dataset>/ (RecBole's data_path)"
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--epochs", type=_positive_int, metavar="N",
        help="train N full epochs (no early stopping, no checkpoint); epoch time measured",
    )
    budget.add_argument(
        "--max_steps", type=_positive_int, metavar="N",
        help="train exactly N optimisation steps; epoch time extrapolated from seconds/step",
    )
    parser.add_argument(
        "--eval_max_users", type=_positive_int, metavar="N",
        help="evaluate only the first N users of the test loader (the same users for every model)",
    )
    parser.add_argument(
        "--valid", action="store_true",
        help="also evaluate on the validation split after each epoch (never stops training)",
    )
    parser.add_argument(
        "--baseline", default=None, help="model of the *_ratio columns (default: the first)"
    )
    parser.add_argument(
        "--output", default=None, metavar="DIR",
        help="output folder (default: bench_out/<dataset>-<timestamp>)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="reuse the models that already finished in --output with the very same settings, "
             "continue a model interrupted there from its last completed epoch, run the others "
             "(an interrupted benchmark goes on where it stopped)",
    )
    parser.add_argument(
        "--config_files", default=None, metavar='"A.yaml B.yaml"',
        help="config files for every model, space separated (as in RecBole)",
    )
    parser.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="torch intra-op threads of every model (default: torch's own choice); on a shared "
        "or oversubscribed CPU, --threads=1 gives steadier timings",
    )
    parser.add_argument(
        "--in_process", action="store_true",
        help="run the models in this process instead of fresh ones (tests, debugging: peak "
        "memory is then not isolated between models)",
    )
    return parser


def parse_args(argv):
    """Parse the command line: ``(namespace, global_overrides, {model: overrides})``.

    Exits with status 2 (argparse's) on bad flags.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    entries = [m.strip() for m in args.models.split(",") if m.strip()]
    if not entries:
        parser.error("--models is empty")
    args.model_classes = OrderedDict()
    for entry in entries:
        label, _, model = entry.rpartition("=")
        label, model = (label.strip() or model.strip()), model.strip()
        if not re.fullmatch(r"[A-Za-z_][\w-]*", label) or not model:
            parser.error(f"--models entry {entry!r}: write MODEL or LABEL=MODEL (LABEL: letters, "
                         "digits, _ and -)")
        if label in args.model_classes:
            parser.error(f"--models lists {label} more than once")
        args.model_classes[label] = model
    models = list(args.model_classes)
    args.models = models
    if args.baseline is None:
        args.baseline = models[0]
    elif args.baseline not in models:
        parser.error(f"--baseline={args.baseline} is not one of --models ({', '.join(models)})")
    args.config_files = args.config_files.strip().split() if args.config_files else []

    global_overrides = OrderedDict()
    model_overrides = OrderedDict((m, OrderedDict()) for m in models)
    for arg in extra:
        match = _EXTRA.match(arg)
        if not match:
            parser.error(
                f"unrecognized argument {arg!r}: config keys are written --key=value "
                "(or --Model.key=value for one model)"
            )
        first, second, value = match.groups()
        if second is None:
            key, target = first, global_overrides
        else:
            if first not in model_overrides:
                parser.error(
                    f"{arg}: {first} is not one of --models ({', '.join(models)})"
                )
            key, target = second, model_overrides[first]
            if key in PROTOCOL_KEYS:
                parser.error(f"{arg}: {key} must be the same for every model; use --{key}=...")
        if key in BENCHMARK_KEYS:
            parser.error(f"{arg}: {key} is set by the benchmark ({BENCHMARK_KEYS[key]})")
        if key in target and target[key] != value:
            parser.error(f"{arg} is given twice with different values")
        target[key] = value
    return args, global_overrides, model_overrides


def model_spec(args, model, global_overrides, model_overrides, model_dir):
    """The worker's spec for ``model``: config files and dict, budget, evaluation."""
    config_dict = OrderedDict(global_overrides)
    config_dict.update(model_overrides.get(model, {}))
    if args.data_path is not None:
        config_dict["data_path"] = args.data_path
    config_dict["epochs"] = args.epochs if args.epochs else 1
    budget = (
        {"mode": "epochs", "value": args.epochs}
        if args.epochs
        else {"mode": "max_steps", "value": args.max_steps}
    )
    return {
        "version": 1,
        "model": model,
        "model_class": args.model_classes.get(model, model),
        "dataset": args.dataset,
        "config_files": [os.path.abspath(f) for f in args.config_files],
        "config_dict": dict(config_dict),
        "budget": budget,
        "eval_max_users": args.eval_max_users,
        "valid": bool(args.valid),
        "threads": args.threads,
        "report_keys": REPORT_KEYS,
        "init_logger": not args.in_process,
        "result_path": os.path.abspath(os.path.join(model_dir, "result.json")),
        # the trainer's resume state, written after every epoch (removed with the result)
        "last_checkpoint": os.path.abspath(os.path.join(model_dir, LAST_CHECKPOINT_FILE)),
    }


def preflight(args, specs):
    """Resolve every model and config before anything trains; returns the first Config.

    Raises :class:`BenchmarkError` with the library's message (unknown model, missing dataset,
    unreadable config file).
    """
    from recbole_semprune.benchmark.worker import build_config
    from recbole_semprune.utils import (
        DatasetError,
        UnknownModelError,
        check_dataset_files,
        get_model,
    )

    for model in args.models:
        try:
            get_model(args.model_classes.get(model, model))
        except UnknownModelError as error:
            raise BenchmarkError(str(error)) from None
    for file in args.config_files:
        if not os.path.isfile(file):
            raise BenchmarkError(f"config file not found: {file}")
    first = None
    for spec in specs:
        try:
            config = build_config(spec)
            check_dataset_files(config)
        except DatasetError as error:
            raise BenchmarkError(str(error)) from None
        except Exception as error:  # the config of this model cannot even be read
            raise BenchmarkError(
                f"{spec['model']}: bad configuration: {type(error).__name__}: {error}"
            ) from None
        if first is None:
            first = config
    return first


def _tail(text, lines=OUTPUT_TAIL_LINES):
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _failed(model, error, tail="", trained=None):
    """A failed row; with the training figures when the model failed after training."""
    row = dict(trained or {}, model=model, status="failed", error=error, output_tail=tail)
    if trained:
        row["error"] = f"{error} (after training, during evaluation)"
    return row


def _read_trained(model_dir):
    from recbole_semprune.benchmark.worker import TRAINED_FILE

    try:
        with open(os.path.join(model_dir, TRAINED_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _worker_env():
    env = os.environ.copy()
    package_root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )  # the folder that holds recbole_semprune/, so the worker imports this same copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_subprocess(spec, model_dir, echo=True):
    """Run one model in a fresh interpreter; its output goes to ``worker.log`` (and stderr)."""
    spec_path = os.path.join(model_dir, "spec.json")
    log_path = os.path.join(model_dir, "worker.log")
    command = [sys.executable, "-m", "recbole_semprune.benchmark.worker", spec_path]
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_worker_env(),
            text=True,
            errors="replace",
        )
        try:
            for line in process.stdout:
                log.write(line)
                if echo:
                    sys.stderr.write(f"[{spec['model']}] {line}")
            returncode = process.wait()
        except BaseException:  # Ctrl-C: stop our worker, then let the interruption through
            process.kill()
            process.wait()
            raise
    with open(log_path, encoding="utf-8", errors="replace") as f:
        output = f.read()
    trained = _read_trained(model_dir)
    if returncode < 0:
        reason = f"worker killed by signal {-returncode}" + (
            " (out of memory?)" if -returncode == 9 else ""
        )
        return _failed(spec["model"], reason, _tail(output), trained)
    if returncode != 0:
        reason = f"worker exited with status {returncode}"
        return _failed(spec["model"], reason, _tail(output), trained)
    try:
        with open(spec["result_path"], encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        reason = f"worker wrote no readable result ({error})"
        return _failed(spec["model"], reason, _tail(output), trained)


def run_in_process(spec, model_dir):
    from recbole_semprune.benchmark.worker import TRAINED_FILE, finish, run_model, write_json

    trained = []

    def on_trained(partial):
        trained.append(partial)
        write_json(os.path.join(model_dir, TRAINED_FILE), partial)

    try:
        result = run_model(spec, on_trained=on_trained)
    except Exception as error:  # report it like a crashed worker and go on with the others
        trace = traceback.format_exc()
        with open(os.path.join(model_dir, "worker.log"), "w", encoding="utf-8") as f:
            f.write(trace)
        reason = f"{type(error).__name__}: {error}"
        return _failed(spec["model"], reason, _tail(trace), trained[0] if trained else None)
    finish(spec, result)
    return result


def _last_line(text):
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


@contextlib.contextmanager
def _cli_logging():
    """The benchmark's own messages on stderr (``benchmark: ...``) while :func:`main` runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("benchmark: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def run_benchmark(argv):
    """Run the benchmark described by ``argv`` (the command line without the program).

    Returns ``(exit_status, output_dir, rows)``: 0 when every model ran, 1 when one failed.
    Raises ``SystemExit(2)`` on bad flags and :class:`BenchmarkError` on a bad setup, both
    before any model trains.
    """
    import torch

    import recbole
    import recbole_semprune
    from recbole_semprune.benchmark.worker import TRAINED_FILE

    args, global_overrides, model_overrides = parse_args(argv)
    now = datetime.datetime.now()
    output = args.output or os.path.join("bench_out", f"{args.dataset}-{now:%Y%m%d-%H%M%S}")
    model_dirs = {m: os.path.join(output, m) for m in args.models}
    specs = [
        model_spec(args, m, global_overrides, model_overrides, model_dirs[m]) for m in args.models
    ]
    first_config = preflight(args, specs)

    os.makedirs(output, exist_ok=True)
    meta = {
        "command": shlex.join(["python", "-m", "recbole_semprune.benchmark", *argv]),
        "date": now.isoformat(timespec="seconds"),
        "dataset": args.dataset,
        "data_path": os.path.abspath(first_config["data_path"]),
        "models": args.models,
        "baseline": args.baseline,
        "budget": specs[0]["budget"],
        "eval_max_users": args.eval_max_users,
        "exclude_seen": first_config["exclude_seen"],
        "valid": args.valid,
        "threads": args.threads,
        "seed": first_config["seed"],
        "device": str(first_config["device"]),
        "config_files": args.config_files,
        "global_overrides": dict(global_overrides),
        "model_overrides": {m: dict(o) for m, o in model_overrides.items()},
        "in_process": args.in_process,
        "torch_version": torch.__version__,
        "recbole_version": recbole.__version__,
        "recbole_semprune_version": recbole_semprune.__version__,
        "python_version": sys.version.split()[0],
    }
    if args.resume and not args.output:
        raise BenchmarkError("--resume needs the --output folder of the run to resume")
    rows = []
    for index, spec in enumerate(specs, 1):
        model = spec["model"]
        model_dir = model_dirs[model]
        finished = _finished_result(spec, model_dir) if args.resume else None
        resumable = args.resume and _same_spec(spec, model_dir) and os.path.exists(
            spec["last_checkpoint"]
        )
        if finished is not None:
            logger.info("[%d/%d] %s: finished in an earlier run with the same settings, reused",
                        index, len(specs), model)
            finished["config_overrides"] = spec["config_dict"]
            rows.append(finished)
            write_tables(output, meta, rows)
            continue
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, "spec.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
        with open(os.path.join(model_dir, "overrides.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "config_files": spec["config_files"],
                    "global": dict(global_overrides),
                    "model": dict(model_overrides[model]),
                    "config_dict": spec["config_dict"],
                },
                f,
                indent=2,
            )
        stale = [spec["result_path"], os.path.join(model_dir, TRAINED_FILE)]
        if not resumable:
            stale.append(spec["last_checkpoint"])
        for path in stale:
            if os.path.exists(path):
                os.remove(path)
        logger.info("[%d/%d] %s%s", index, len(specs), model,
                    ": resumed from its last completed epoch" if resumable else "")
        row = (
            run_in_process(spec, model_dir)
            if args.in_process
            else run_subprocess(spec, model_dir)
        )
        if row.get("status") != "ok":
            logger.error(
                "%s failed: %s\n%s", model, row.get("error"), row.get("output_tail", "")
            )
            last = _last_line(row.get("output_tail", ""))
            if last and last not in row["error"]:
                row["error"] = f"{row['error']}: {last}"
        row["config_overrides"] = spec["config_dict"]
        rows.append(row)
        write_tables(output, meta, rows)  # after every model: a long run stopped early keeps them

    title = report.plot_title(meta)
    for name, written in (
        ("results.png", report.write_plot(os.path.join(output, "results.png"), rows, title)),
        ("tradeoff.png", report.write_tradeoff_plot(os.path.join(output, "tradeoff.png"), rows,
                                                    title)),
        ("curves.png", report.write_curves(os.path.join(output, "curves.csv"),
                                           os.path.join(output, "curves.png"), rows, title)),
    ):
        if written:
            logger.info("plot: %s", os.path.join(output, name))
    failed = [r["model"] for r in rows if r.get("status") != "ok"]
    if failed:
        logger.error("failed: %s (see %s/<model>/worker.log)", ", ".join(failed), output)
    logger.info("results: %s", os.path.abspath(output))
    return (1 if failed else 0), output, rows


def _same_spec(spec, model_dir):
    """Whether the earlier run in ``model_dir`` was asked to run exactly ``spec``."""
    try:
        with open(os.path.join(model_dir, "spec.json"), encoding="utf-8") as f:
            return json.load(f) == json.loads(json.dumps(spec))
    except (OSError, ValueError):
        return False


def _finished_result(spec, model_dir):
    """The result of an earlier run of exactly ``spec`` in ``model_dir`` that finished, else
    None (no result, a failed one, or other settings)."""
    if not _same_spec(spec, model_dir):
        return None
    try:
        with open(spec["result_path"], encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if result.get("status") == "ok" else None


def write_tables(output, meta, rows):
    """results.json, results.csv and results.md of the models run so far."""
    report.write_json(os.path.join(output, "results.json"), meta, rows)
    report.write_csv(os.path.join(output, "results.csv"), rows, meta["baseline"])
    with open(os.path.join(output, "results.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown_report(meta, rows))


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 a model failed, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with _cli_logging():
            status, output, _ = run_benchmark(argv)
    except BenchmarkError as error:
        print(f"{build_parser().prog}: error: {error}", file=sys.stderr)
        return 2
    with open(os.path.join(output, "results.md"), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    sys.stdout.flush()
    return status
