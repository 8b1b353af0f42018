"""What the benchmark's commands share: the model list (``LABEL=MODEL``), config overrides
(``--KEY=VALUE``, ``--LABEL.KEY=VALUE``), a model's Config, the check before anything trains,
their log lines and JSON files."""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections import OrderedDict

logger = logging.getLogger("recbole_semprune.benchmark")
_OVERRIDE = re.compile(r"^--(?:([A-Za-z_][\w-]*)\.)?([A-Za-z_][\w-]*)=(.*)$", re.S)


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


def add_model_arguments(parser):
    """The flags every command has: dataset, models, data, config files, threads, baseline."""
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. ml-100k, amazon-beauty")
    parser.add_argument(
        "--models", required=True,
        help="comma-separated model names (plugin or RecBole), e.g. SASRec,BERT4Rec,TIGER; "
        "LABEL=MODEL runs MODEL under its own name LABEL, so one model can run in several "
        "variants set by --LABEL.KEY=VALUE, e.g. SAP=STAMPSID --SAP.multistep_steps=0")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (RecBole's data_path)")
    parser.add_argument("--baseline", default=None, help="model of the *_ratio columns (default: the first)")
    parser.add_argument("--config_files", default=None, metavar='"A.yaml B.yaml"',
                        help="config files for every model, space separated (as in RecBole)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch intra-op threads of every model (default: torch's own choice); on "
                        "a shared or oversubscribed CPU, --threads=1 gives steadier timings")


def parse_models(parser, args):
    """Sets ``args.model_classes`` ({label: model}), ``args.models`` (the labels), checks
    ``args.baseline`` (default: the first) and splits ``args.config_files``."""
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
    args.models = list(args.model_classes)
    if args.baseline is None:
        args.baseline = args.models[0]
    elif args.baseline not in args.models:
        parser.error(f"--baseline={args.baseline} is not one of --models ({', '.join(args.models)})")
    args.config_files = args.config_files.strip().split() if args.config_files else []
    return args


def parse_overrides(parser, extra, labels, reserved=None, shared_keys=()):
    """``(for every model, {label: for that model})`` from ``--KEY=VALUE`` and
    ``--LABEL.KEY=VALUE``; ``reserved``: {key: why it may not be set}; ``shared_keys``: keys
    that may not differ between models."""
    shared, per_model = OrderedDict(), OrderedDict((label, OrderedDict()) for label in labels)
    for arg in extra:
        match = _OVERRIDE.match(arg)
        if not match:
            parser.error(f"unrecognized argument {arg!r}: config keys are written --key=value "
                         "(or --Model.key=value for one model)")
        label, key, value = match.groups()
        if label is not None and label not in per_model:
            parser.error(f"{arg}: {label} is not one of --models ({', '.join(labels)})")
        if label is not None and key in shared_keys:
            parser.error(f"{arg}: {key} must be the same for every model; use --{key}=...")
        if key in (reserved or {}):
            parser.error(f"{arg}: {key} is set by the benchmark ({reserved[key]})")
        target = shared if label is None else per_model[label]
        if key in target and target[key] != value:
            parser.error(f"{arg} is given twice with different values")
        target[key] = value
    return shared, per_model


@contextlib.contextmanager
def clean_argv():
    """Hide this process's command line from RecBole's Config (it parses every ``--k=v``)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_semprune.benchmark"]
    try:
        yield
    finally:
        sys.argv = saved


def build_config(spec):
    """The plugin Config of one model of a spec (command line hidden, overrides as a dict)."""
    from recbole_semprune.config import Config

    with clean_argv():
        return Config(model=spec.get("model_class", spec["model"]), dataset=spec["dataset"],
                      config_file_list=spec.get("config_files") or None,
                      config_dict=dict(spec.get("config_dict") or {}))


def preflight(args, specs):
    """Resolve every model and config before anything trains; returns the first Config.

    Raises :class:`BenchmarkError` with the library's message (unknown model, missing dataset,
    unreadable config file)."""
    from recbole_semprune.utils import DatasetError, UnknownModelError, check_dataset_files, get_model

    for model in args.model_classes.values():
        try:
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


@contextlib.contextmanager
def cli_logging():
    """The benchmark's own messages on stderr (``benchmark: ...``) while a command runs."""
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


def read_json(path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, data):
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)
