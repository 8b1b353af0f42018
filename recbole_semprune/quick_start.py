"""Entry points RecBole users know, for plugin and RecBole models alike.

``run_recbole_semprune`` / ``run`` mirror ``recbole.quick_start.run_recbole`` / ``run``,
``objective_function`` serves RecBole's ``HyperTuning`` and ``load_data_and_model`` reloads a
checkpoint. They never import ``recbole.quick_start`` (which imports ray).

A run checks what it was given before it loads the dataset, builds semantic IDs or writes
anything (:func:`check_run`): a bad setting, config file or data file raises a
:class:`~recbole_semprune.errors.UserInputError` whose message is one line. Result dicts hold
plain Python floats.
"""

import contextlib
import logging
import os
import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch
import torch.distributed as dist
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_semprune import checkpoint
from recbole_semprune.compat import load_checkpoint
from recbole_semprune.config import Config, add_keys_added_since, dataset_config_file, read_config_file
from recbole_semprune.data.batching import use_length_buckets
from recbole_semprune.data.protocol import complete_protocol
from recbole_semprune.errors import SettingsError, UserInputError
from recbole_semprune.trainer import LRSchedule, Trainer, check_max_steps, exclude_seen
from recbole_semprune.utils import (
    check_dataset_files,
    check_negative_sampling,
    check_train_rows,
    create_dataset,
    get_model,
    is_sid_model,
    get_trainer,
)


def _settings_errors(check, *args):
    """``check(*args)``, its ValueError turned into a SettingsError (a check's ValueError is
    about a setting by contract, see :func:`check_run`)."""
    try:
        return check(*args)
    except SettingsError:
        raise
    except ValueError as error:
        raise SettingsError(str(error)) from error


def check_run(config):
    """Every check of a run that needs no data loaded, before anything is written.

    A dataset without a dataset config gets its ``load_col`` from its files' headers
    (:func:`~recbole_semprune.data.protocol.complete_protocol`); the dataset's files are
    checked (:func:`~recbole_semprune.utils.check_dataset_files`); the step budget and the
    learning-rate schedule are checked; a pairwise model must get
    negatives; renamed keys are refused (:data:`RENAMED_KEYS`); ``train_rows`` is checked
    against the model; a SID model checks its settings in its class method
    ``check_config(config)``, raising ValueError on a bad one and returning warnings.
    Raises a :class:`~recbole_semprune.errors.UserInputError`; returns ``(level, message)``
    log lines for when the logger is set up.
    """
    has_config = os.path.isfile(dataset_config_file(config["dataset"]))
    notes = [(logging.INFO, line) for line in complete_protocol(config, has_config)]
    check_dataset_files(config)
    check_negative_sampling(config)
    check_renamed_keys(config)
    _settings_errors(check_train_rows, config)
    _settings_errors(check_max_steps, config["max_steps"])
    _settings_errors(LRSchedule, config)
    model_class = get_model(config["model"])
    if is_sid_model(model_class):
        notes += [(logging.WARNING, line)
                  for line in _settings_errors(model_class.check_config, config)]
    return notes


# keys an earlier version read -> the key that replaced them
RENAMED_KEYS = {"map_steps": "multistep_steps", "map_weight": "multistep_weight",
                "map_heads": "multistep_heads"}


def check_renamed_keys(config):
    """A key set by the user that was renamed is refused, naming the new key (SettingsError)."""
    for old, new in RENAMED_KEYS.items():
        if old in getattr(config, "external_config_dict", {}):
            raise SettingsError(f"{old} was renamed {new}: set {new} instead of {old}.")


@contextlib.contextmanager
def _undone_on_user_error(folders, log_folder):
    """If the block stops on a :class:`UserInputError` (one found once the data is loaded,
    e.g. a codebook larger than the items), remove what the run wrote: the new files in
    ``log_folder`` (its log) and the ``folders`` it created, so a failed run changes nothing."""
    new_folders = []
    for folder in folders:
        folder = os.path.normpath(folder)
        while folder and not os.path.exists(folder) and folder not in new_folders:
            new_folders.append(folder)
            folder = os.path.dirname(folder)
    old_logs = set(os.listdir(log_folder)) if os.path.isdir(log_folder) else set()
    try:
        yield
    except UserInputError:
        root = getLogger()
        for handler in list(root.handlers):
            in_folder = os.path.dirname(getattr(handler, "baseFilename", "")) == os.path.abspath(log_folder)
            if isinstance(handler, logging.FileHandler) and in_folder:
                handler.close()
                root.removeHandler(handler)
        for name in set(os.listdir(log_folder)) - old_logs if os.path.isdir(log_folder) else []:
            os.remove(os.path.join(log_folder, name))
        for folder in sorted(new_folders, key=len, reverse=True):  # deepest first
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise


def plain_floats(result):
    """A metrics dict with plain Python floats (RecBole's hold numpy floats, which print as
    ``np.float64(0.0125)`` under numpy 2)."""
    return {key: float(value) for key, value in result.items()}


def resume_state(config):
    """``(path, state)`` of the run that ``config["resume"]`` names, or None to start afresh.

    Raises :class:`ResumeError` (one line) on a bad value, nothing to resume, a state of other
    settings, or a run this resume cannot continue, before anything expensive is built.
    """
    value = config["resume"]
    if value is None or value is False:
        return None
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])
    if not issubclass(trainer, Trainer):
        raise checkpoint.ResumeError(
            f"resume: {config['model']} trains with RecBole's {trainer.__name__}; only models "
            "on the plain Trainer (every sequential model, every model of this plugin) resume"
        )
    if not config["single_spec"]:
        raise checkpoint.ResumeError("resume: only single-process runs resume (nproc=1)")
    if value is True:
        path = checkpoint.find_last_checkpoint(config)
    elif isinstance(value, str):
        path = value
    else:
        raise checkpoint.ResumeError(
            f"resume must be True, False or the path of a <Model>-<time>{checkpoint.LAST_SUFFIX} file, "
            f"got {value!r}"
        )
    return path, checkpoint.load_resume_state(path, config)


def build_model(config, dataset, state_dict=None):
    """``config["model"]`` on ``dataset``; with a checkpoint's ``state_dict``, a SID model takes
    its semantic IDs from it (``checkpoint_init_kwargs``) instead of rebuilding them."""
    model_class = get_model(config["model"])
    kwargs = {}
    if state_dict is not None and is_sid_model(model_class):
        kwargs = model_class.checkpoint_init_kwargs(state_dict)
    return model_class(config, dataset, **kwargs)


def prepare_data(config, dataset):
    """RecBole's ``data_preparation``; for a model that trims its batches to the longest row
    (the SID models) with ``padding_free`` on, every loader then
    draws length-bucketed batches (:mod:`recbole_semprune.data.batching`)."""
    loaders = data_preparation(config, dataset)
    if is_sid_model(get_model(config["model"])) and config["padding_free"]:
        for loader, shuffle in zip(loaders, (config["shuffle"], False, False)):
            use_length_buckets(loader, config, shuffle)
    return loaders


def _build(config, logger=None, resume=None, checked=False):
    """Dataset, splits, model and trainer for ``config``, as RecBole's quick start builds them;
    ``resume``: ``(path, state)`` of :func:`resume_state`, which the trainer
    continues (the model gets the state's semantic IDs); ``checked``: :func:`check_run`
    already checked the dataset's files."""
    dataset = create_dataset(config, check_files=not checked)
    if logger:
        logger.info(dataset)
    model_class = get_model(config["model"])
    if is_sid_model(model_class):  # settings sized by the data (codebooks), before any is built
        for line in _settings_errors(model_class.fit_to_dataset, config, dataset):
            getLogger().info(line)
    train_data, valid_data, test_data = prepare_data(config, dataset)
    # one seed per process (RecBole adds local_rank, which repeats on every machine)
    rank = 0 if config["single_spec"] else config["local_rank"] + (config["offset"] or 0)
    init_seed(config["seed"] + rank, config["reproducibility"])
    state_dict = resume[1]["state_dict"] if resume else None
    model = build_model(config, train_data._dataset, state_dict).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if resume:
        trainer.resume_from(*resume)
    return dataset, train_data, valid_data, test_data, model, trainer


def run_recbole_semprune(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
):
    """Train and test ``model`` on ``dataset``; returns RecBole's result dict.

    Args are those of ``recbole.quick_start.run_recbole``; ``model`` may name a plugin or a
    RecBole model.
    """
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    exclude_seen(config)
    resume = resume_state(config)  # a one-line ResumeError before anything is built
    notes = check_run(config)
    init_seed(config["seed"], config["reproducibility"])
    log_folder = os.path.join("log", config["model"])
    folders = (log_folder, "log_tensorboard", config["checkpoint_dir"])
    with _undone_on_user_error(folders, log_folder):
        # RecBole creates these with exists-then-makedirs: processes started together race on it
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        init_logger(config)
        logger = getLogger()
        logger.info(sys.argv)
        logger.info(config)
        for level, line in notes:
            logger.log(level, line)
        if config["single_spec"] and (config["nproc"] or 1) > 1:
            logger.warning(
                f"nproc={config['nproc']} is set, but run_recbole_semprune() trains in this one "
                "process: use recbole_semprune.quick_start.run(...) or run_recbole_semprune.py "
                "--nproc=N to start several (docs/distributed.md)."
            )

        dataset, train_data, valid_data, test_data, model, trainer = _build(
            config, logger, resume, checked=True
        )
    logger.info(model)
    transform = construct_transform(config)
    flops = get_flops(model, dataset, config["device"], logger, transform)
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = plain_floats(
        trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    )
    best_valid_score, best_valid_result = float(best_valid_score), plain_floats(best_valid_result)
    trainer.remove_last_checkpoint()

    environment_tb = get_environment(config)
    logger.info(
        "The running environment of this training is as follows:\n" + environment_tb.draw()
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    for key in ("epoch_stats", "valid_stats"):  # the plugin trainer's figures per epoch
        if hasattr(trainer, key):
            result[key] = [dict(stats) for stats in getattr(trainer, key)]
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def _run_rank(rank, *args):
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"The last argument must be a dict of keyword arguments, got {type(kwargs)}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    run_recbole_semprune(*args[:3], **kwargs)


# run()'s argument -> (config key, RecBole's default)
DISTRIBUTED_KEYS = {
    "nproc": ("nproc", 1),
    "world_size": ("world_size", -1),
    "ip": ("ip", "localhost"),
    "port": ("port", "5678"),
    "group_offset": ("offset", 0),
}


def file_settings(config_file_list, keys):
    """The ``keys`` set in the user's config files (later files win); a missing or broken
    file raises :class:`~recbole_semprune.errors.SettingsError`."""
    settings = {}
    for file in config_file_list or []:
        content = read_config_file(file)
        settings.update({key: value for key, value in content.items() if key in keys})
    return settings


def distributed_settings(config_file_list=None, config_dict=None, **arguments):
    """``{nproc, world_size, ip, port, group_offset}`` of a run: each from ``run()``'s
    argument if given (not None), else the config dict, else the config files, else
    RecBole's default; checked, with ``world_size`` -1 resolved to ``nproc``."""
    from recbole_semprune.distributed import check_settings

    keys = {key for key, _ in DISTRIBUTED_KEYS.values()}
    layers = [file_settings(config_file_list, keys), dict(config_dict or {})]
    settings = {}
    for argument, (key, default) in DISTRIBUTED_KEYS.items():
        value = arguments.get(argument)
        if value is None:
            value = next((layer[key] for layer in reversed(layers) if key in layer), default)
        settings[argument] = value
    settings["world_size"] = check_settings(
        settings["nproc"], settings["world_size"], settings["group_offset"], settings["port"]
    )
    return settings


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=None,
        world_size=None, ip=None, port=None, group_offset=None):
    """Single- or multi-process run, with the arguments of ``recbole.quick_start.run``.

    ``nproc`` processes are started on this machine (ranks ``group_offset`` ...
    ``group_offset + nproc - 1`` of ``world_size``, meeting at ``ip:port``), each training on
    its share of every batch: gloo on CPU, NCCL on GPUs (key ``dist_backend``). An argument
    left None is taken from ``config_dict``, then the config files (keys ``nproc``,
    ``world_size``, ``ip``, ``port``, ``offset``), then RecBole's default (1, -1 = nproc,
    localhost, 5678, 0). Returns the result dict of this machine's first process (None if it
    gave none). See docs/distributed.md.
    """
    settings = distributed_settings(
        config_file_list, config_dict, nproc=nproc, world_size=world_size, ip=ip, port=port,
        group_offset=group_offset,
    )
    nproc, world_size = settings["nproc"], settings["world_size"]
    if nproc == 1 and world_size == 1:
        return run_recbole_semprune(model, dataset, config_file_list, config_dict, saved)
    # the processes would each fail with a traceback: check once here first
    check_run(Config(model, dataset, config_file_list, config_dict))
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {
            "world_size": world_size,
            "ip": settings["ip"],
            "port": settings["port"],
            "nproc": nproc,
            "offset": settings["group_offset"],
        }
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    mp.spawn(_run_rank, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Objective for ``recbole.trainer.HyperTuning`` (same contract as RecBole's own)."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    notes = check_run(config)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    for level, line in notes:
        logger.log(level, line)
    _, train_data, valid_data, test_data, _, trainer = _build(
        config, resume=resume_state(config), checked=True
    )
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=False, saved=saved
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    trainer.remove_last_checkpoint()
    return {
        "model": config["model"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": plain_floats(best_valid_result),
        "test_result": plain_floats(test_result),
    }


def load_data_and_model(model_file, device=None):
    """Reload a checkpoint written by a run: ``(config, model, dataset, train, valid, test)``.

    The dataset is rebuilt from the checkpoint's config (same files, filters and split), and
    the model gets the checkpoint's weights and buffers. A checkpoint of an earlier version of
    the plugin gets the keys added since at their defaults (:func:`add_keys_added_since`).
    ``device`` overrides the device the checkpoint was trained on (default: that one if
    available, else CPU).
    """
    saved = load_checkpoint(model_file, map_location="cpu")
    config = saved["config"]
    added = add_keys_added_since(config)  # a checkpoint of an earlier version of the plugin
    if not config["single_spec"]:  # written by a multi-process run: reload in this one
        config["single_spec"], config["local_rank"] = True, 0
    if device is None:
        device = config["device"]
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            device = "cpu"
    config["device"] = torch.device(device)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    if added:
        logger.info(f"Keys added to the plugin since this checkpoint, at their defaults: {', '.join(added)}")
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = prepare_data(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    # SID models take their codes from the checkpoint instead of rebuilding them
    model = build_model(config, train_data._dataset, saved["state_dict"])
    model = model.to(config["device"])
    model.load_state_dict(saved["state_dict"])
    model.load_other_parameter(saved.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
