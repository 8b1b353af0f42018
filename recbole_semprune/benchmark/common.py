"""What the benchmark's commands and the checkpoint scripts share: the model flags (``--models``
with ``LABEL=MODEL``, ``--KEY=VALUE``, ``--LABEL.KEY=VALUE``), a model's Config, the check before
anything trains, running a command and its workers, thread settings and JSON files."""

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

logger = logging.getLogger("recbole_semprune.benchmark")
_NAME = r"[A-Za-z_][\w-]*"
_OVERRIDE = re.compile(rf"^--(?:({_NAME})\.)?({_NAME})=(.*)$", re.S)


class BenchmarkError(Exception):
    """Bad arguments or setup, found before any model trains."""


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def model_parser(prog, description, epilog=None):
    """A parser with the flags every benchmark command has (docs/benchmarks.md)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     allow_abbrev=False)
    add = parser.add_argument
    add("--dataset", required=True, help="dataset name, e.g. ml-100k")
    add("--models", required=True, help="comma-separated MODEL or LABEL=MODEL (a variant set by "
        "--LABEL.KEY=VALUE)")
    add("--data_path", default=None, help="folder holding <dataset>/")
    add("--baseline", default=None, help="model of the ratios (default: the first)")
    add("--config_files", default=None, metavar='"A.yaml B.yaml"',
        help="config files for every model, space separated")
    add("--threads", type=positive_int, metavar="N", help="torch threads per model")
    return parser


def parse_models(parser, args, extra, reserved=None, shared_keys=()):
    """Sets ``args.model_classes`` ({label: model}) and ``args.models`` (labels), checks
    ``args.baseline``, splits ``args.config_files``; returns the overrides ``(for every model,
    {label: for that model})`` of ``extra``: no ``reserved`` key ({key: why}), no per-model
    ``shared_keys``."""
    entries = [m.strip() for m in args.models.split(",") if m.strip()]
    if not entries:
        parser.error("--models is empty")
    args.model_classes = {}
    for entry in entries:
        label, _, model = (part.strip() for part in entry.rpartition("="))
        label = label or model
        if not re.fullmatch(_NAME, label) or not model:
            parser.error(f"--models entry {entry!r}: write MODEL or LABEL=MODEL (LABEL: letters, "
                         "digits, _ and -)")
        if label in args.model_classes:
            parser.error(f"--models lists {label} more than once")
        args.model_classes[label] = model
    args.models = labels = list(args.model_classes)
    args.baseline = labels[0] if args.baseline is None else args.baseline
    if args.baseline not in labels:
        parser.error(f"--baseline={args.baseline} is not one of --models ({', '.join(labels)})")
    args.config_files = args.config_files.strip().split() if args.config_files else []
    shared, per_model, reserved = {}, {label: {} for label in labels}, reserved or {}
    for arg in extra:
        match = _OVERRIDE.match(arg)
        if match is None:
            parser.error(f"unrecognized argument {arg!r}: config keys are written --key=value "
                         "(or --Model.key=value for one model)")
        label, key, value = match.groups()
        if label is not None and label not in per_model:
            parser.error(f"{arg}: {label} is not one of --models ({', '.join(labels)})")
        if label is not None and key in shared_keys:
            parser.error(f"{arg}: {key} must be the same for every model; use --{key}=...")
        if key in reserved:
            parser.error(f"{arg}: {key} is set by the benchmark ({reserved[key]})")
        target = shared if label is None else per_model[label]
        if target.setdefault(key, value) != value:
            parser.error(f"{arg} is given twice with different values")
    return shared, per_model


def model_specs(args, shared, overrides, **spec):
    """One spec per label: model, class, dataset, config files, config dict (``spec`` added)."""
    data_path = {"data_path": args.data_path} if args.data_path is not None else {}
    return [dict(model=m, model_class=args.model_classes[m], dataset=args.dataset,
                 config_files=[os.path.abspath(f) for f in args.config_files],
                 config_dict={**shared, **overrides[m], **data_path}, **spec) for m in args.models]


def build_config(spec):
    """The plugin Config of one model of a spec, with this process's command line hidden
    (RecBole's Config parses every ``--k=v`` of ``sys.argv``)."""
    from recbole_semprune.config import Config

    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        return Config(model=spec.get("model_class", spec["model"]), dataset=spec["dataset"],
                      config_file_list=spec.get("config_files") or None,
                      config_dict=dict(spec.get("config_dict") or {}))
    finally:
        sys.argv = saved


def preflight(args, specs):
    """Resolve every model and config before anything trains; returns the first Config.
    Raises :class:`BenchmarkError` with the library's message."""
    from recbole_semprune.utils import (
        DatasetError, UnknownModelError, check_dataset_files, get_model,
    )

    try:
        for model in args.model_classes.values():
            get_model(model)
    except UnknownModelError as error:
        raise BenchmarkError(str(error)) from None
    for file in args.config_files:
        if not os.path.isfile(file):
            raise BenchmarkError(f"config file not found: {file}")
    configs = []
    for spec in specs:
        try:
            configs.append(build_config(spec))
            check_dataset_files(configs[-1])
        except DatasetError as error:
            raise BenchmarkError(str(error)) from None
        except Exception as error:  # the config of this model cannot even be read
            raise BenchmarkError(
                f"{spec['model']}: bad configuration: {type(error).__name__}: {error}") from None
    return configs[0]


def start(prog, argv, output, name):
    """``(output folder, {"command", "date"})`` of a command run now: ``output``, or
    ``bench_out/<name>-<timestamp>``."""
    now = datetime.datetime.now()
    folder = output or os.path.join("bench_out", f"{name}-{now:%Y%m%d-%H%M%S}")
    return folder, {"command": shlex.join(prog.split() + argv),
                    "date": now.isoformat(timespec="seconds")}


def run_command(prog, run, argv, table):
    """A command's ``main``: ``run(argv)`` -> ``(status, output folder)``, then prints ``table``
    of that folder; the benchmark's messages on stderr; status 2 on bad flags or setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("benchmark: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        status, output = run(list(sys.argv[1:] if argv is None else argv))
    except BenchmarkError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's usage error
        return exit_.code
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    with open(os.path.join(output, table), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    return status


def run_module(args, log_path, mode="w", prefix=None):
    """``python -m ARGS`` in a fresh interpreter that imports this same copy of the package, its
    output written to ``log_path`` (and, with ``prefix``, to stderr); returns its exit status.
    Ctrl-C or a ``kill`` (SIGTERM) of this process stops the child too: a run of hours is never
    left training on its own, without anyone reading its output."""
    # the folder that holds recbole_semprune/
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    state = {"child": None, "signal": None}

    def terminated(signum, frame):
        state["signal"] = signum
        if state["child"] is not None:  # else: acted on as soon as the starting child has a handle
            raise SystemExit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    with open(log_path, mode, buffering=1, encoding="utf-8") as log:
        try:
            state["child"] = process = subprocess.Popen(
                [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=env, text=True, errors="replace")
            if state["signal"] is not None:  # killed while the child was starting
                raise SystemExit(128 + state["signal"])
            for line in process.stdout:
                log.write(line)
                if prefix:
                    sys.stderr.write(prefix + line)
            return process.wait()
        except BaseException:  # Ctrl-C, kill: stop the child, then let the interruption through
            if state["child"] is not None:
                state["child"].kill()
                state["child"].wait()
            raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def torch_threads(threads):
    """torch's intra-op threads set to ``threads`` (if given) and restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(threads or saved))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def checkpoint_parser(doc):
    """The parser of a checkpoint script: ``--split``, ``--threads``, ``--exclude_seen`` (None:
    as saved); :func:`parse_checkpoint_args` reads it."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--exclude_seen", choices=["True", "False"], default=None,
                        help="set the history mask exclude_seen (default: the checkpoint's)")
    return parser


def parse_checkpoint_args(parser, argv, files):
    """Parsed arguments: the checkpoints ``args.<files>`` checked, threads set, ``exclude_seen``
    a bool or None."""
    import torch

    args = parser.parse_args(argv)
    paths = getattr(args, files)
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.isfile(path):
            parser.error(f"no checkpoint at {path}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.exclude_seen is not None:
        args.exclude_seen = args.exclude_seen == "True"
    return args


def read_json(path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, data):
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    write_text(path, json.dumps(data, indent=2))


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def remove(paths):
    """Delete those of ``paths`` that exist."""
    for path in filter(os.path.exists, paths):
        os.remove(path)
