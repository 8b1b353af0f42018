"""Training that survives interruption: the resume state of a run and how a run finds it.

A run that saves checkpoints (``saved=True``, the default of ``run_recbole_semprune``) writes,
beside RecBole's best-model checkpoint ``<checkpoint_dir>/<Model>-<time>.pth``, the resume
state ``<Model>-<time>-last.pth`` after every completed epoch (after its validation when the
epoch validates): model, optimiser (and scheduler, where a trainer has one), early-stopping
state, the best epoch's checkpoint, the per-epoch figures, and every random state that training
draws from (python, numpy, torch, CUDA, and the ``generator`` of each data loader). The file is
removed when the run has its test result. The plugin :class:`~recbole_semprune.trainer.Trainer`
writes and reads it; this module holds the file format, the atomic write and the search.

Config key ``resume`` (``properties/overall.yaml``): ``False`` (start afresh), ``True`` (the
newest resume state in ``checkpoint_dir`` of this model and dataset whose settings are this
run's), or the path of a ``...-last.pth`` file. A resumed run ends as the uninterrupted run
would have (same seed: same test result and best epoch).
"""

import glob
import os
import random

import numpy as np
import torch

from recbole_semprune.compat import load_checkpoint
from recbole_semprune.errors import SettingsError

LAST_SUFFIX = "-last.pth"
FORMAT = "recbole_semprune-resume-1"
# Keys that may differ between an interrupted run and its resumption: where the run reads and
# writes files, on which device it runs, what it prints, and how long it may still train.
RESUME_FREE_KEYS = frozenset({
    "resume",
    "epochs", "stopping_step",
    "device", "gpu_id", "use_gpu", "worker",
    "state", "show_progress", "log_wandb", "wandb_project", "loss_decimal_place",
    "checkpoint_dir", "data_path", "sid_cache", "sid_cache_dir",
    "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
    "eval_batch_size",
})


# Parameter-name prefixes of checkpoints written before the models were recomposed (old ->
# new): the backbones became components, MAP and Rec2PM's memory modules the model owns.
# SIDRecommender renames them whenever a state dict is loaded (:func:`rename_legacy_keys`).
LEGACY_PREFIXES = {
    "encoder.": "backbone.encoder.",
    "decoder.": "backbone.decoder.",
    "map_heads.": "multistep.heads.",
    "map_start": "multistep.start",
    "query_embedding.": "backbone.query_embedding.",
    "memory_slot_embedding.": "backbone.memory_slot_embedding.",
    "memory_proj.": "backbone.memory_proj.",
    "segment_embedding.": "backbone.segment_embedding.",
    "initial_memory.": "backbone.initial_memory.",
}


def rename_legacy_keys(state_dict, prefix="", *_):
    """Renames, in place, the keys of ``state_dict`` under ``prefix`` (a module's place in it)
    that start with an old name of :data:`LEGACY_PREFIXES`; returns ``state_dict``. Its
    signature is that of a ``load_state_dict`` pre-hook."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        name = key[len(prefix):]
        for old, new in LEGACY_PREFIXES.items():
            if name.startswith(old):
                state_dict[prefix + new + name[len(old):]] = state_dict.pop(key)
                break
    return state_dict


class ResumeError(SettingsError):
    """Nothing to resume, or a resume state that does not belong to this run."""


def last_checkpoint_path(saved_model_file):
    """The resume state beside the best-model checkpoint ``saved_model_file``."""
    stem = saved_model_file[:-4] if saved_model_file.endswith(".pth") else saved_model_file
    return stem + LAST_SUFFIX


def atomic_save(obj, path):
    """``torch.save`` that never leaves a half-written ``path``: the file is written beside it
    (``.<name>.part``), flushed to disk, then renamed over ``path`` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    part = os.path.join(folder, f".{os.path.basename(path)}.part")  # a killed write's is reused
    try:
        with open(part, "wb") as f:
            torch.save(obj, f, pickle_protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    try:  # make the rename itself durable
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def to_cpu(obj):
    """A copy of ``obj`` (nested dicts, lists, tuples) with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        copy = obj.__class__((key, to_cpu(value)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):  # a module's state_dict: keep its version information
            copy._metadata = obj._metadata
        return copy
    if isinstance(obj, (list, tuple)):
        return obj.__class__(to_cpu(value) for value in obj)
    return obj


def rng_state(loaders):
    """Every random state training draws from; ``loaders``: ``{name: data loader or None}``."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loaders": {
            name: loader.generator.get_state()
            for name, loader in loaders.items()
            if getattr(loader, "generator", None) is not None
        },
    }


def set_rng_state(state, loaders):
    """Puts back what :func:`rng_state` returned (the loaders by the same names)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # other GPUs than the interrupted run had: one state each for those that match
            for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)
    for name, generator_state in state["loaders"].items():
        loader = loaders.get(name)
        if getattr(loader, "generator", None) is not None:
            loader.generator.set_state(generator_state)


def _same(a, b):
    try:
        return bool(a == b)
    except Exception:  # values whose == is not a truth value (arrays): compare their text
        return repr(a) == repr(b)


def config_differences(saved, config):
    """``[(key, saved value, this run's value)]`` of the keys that make a run another run
    (all but :data:`RESUME_FREE_KEYS`)."""
    saved_dict, dict_now = saved.final_config_dict, config.final_config_dict
    defaults = config.internal_config_dict
    keys = sorted((set(saved_dict) | set(dict_now)) - RESUME_FREE_KEYS, key=str)
    return [
        (key, saved_dict.get(key), dict_now.get(key))
        for key in keys
        if not _same(saved_dict.get(key), dict_now.get(key))
        and not _added_since_at_default(key, saved_dict, dict_now, defaults)
    ]


# Keys whose yaml default changed after they were added: the value that reproduces what the
# library did before the key existed. A config written before then (a checkpoint, a resume
# state) ran with this value, not with today's default.
EARLIER_BEHAVIOUR = {
    # fused content + co-occurrence item vectors became the default on 2026-12-05 (issue 20)
    "sid_collaborative_weight": 0.0,
}


def earlier_behaviour(key, default):
    """The value of ``key`` that reproduces a run made before the key existed: ``default``
    (its yaml default) unless that default changed later (:data:`EARLIER_BEHAVIOUR`)."""
    return EARLIER_BEHAVIOUR.get(key, default)


def _added_since_at_default(key, saved_dict, dict_now, defaults):
    """A key the saved run's version of the library did not have yet, set here to the value
    that keeps the earlier behaviour (its default, unless that changed since:
    :func:`earlier_behaviour`): the same run."""
    return key not in saved_dict and key in defaults and _same(
        earlier_behaviour(key, defaults[key]), dict_now.get(key))


def describe_differences(differences, limit=6):
    text = ", ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in differences[:limit])
    more = len(differences) - limit
    return text + (f" and {more} more" if more > 0 else "")


def _read_config(path):
    """The config stored in a resume state (reads the pickle only, not the weights); None if
    the file is not one."""
    try:
        state = load_checkpoint(path, map_location="cpu", mmap=True)
    except Exception:
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None
    return state["config"]


def find_last_checkpoint(config):
    """The newest ``<Model>-*-last.pth`` in ``checkpoint_dir`` of this model and dataset whose
    settings are this run's (see :func:`config_differences`)."""
    model, dataset, folder = config["model"], config["dataset"], config["checkpoint_dir"]
    pattern = os.path.join(glob.escape(folder), f"{glob.escape(model)}-*{LAST_SUFFIX}")
    candidates = sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True)
    others = []
    for path in candidates:
        saved = _read_config(path)
        if saved is None or saved["model"] != model or saved["dataset"] != dataset:
            continue
        differences = config_differences(saved, config)
        if not differences:
            return path
        others.append((path, differences))
    if others:
        path, differences = others[0]
        raise ResumeError(
            f"resume=True: no interrupted {model} run on {dataset} in {folder} has this run's "
            f"settings; the newest, {path}, differs in {describe_differences(differences)} "
            f"(resume it with its own settings, or start afresh with resume=False)"
        )
    raise ResumeError(
        f"resume=True: nothing to resume, no interrupted {model} run on {dataset} in "
        f"{os.path.abspath(folder)} (a run writes <Model>-<time>{LAST_SUFFIX} there after each "
        f"epoch and removes it once it has its test result)"
    )


def load_resume_state(path, config):
    """The resume state in ``path``, checked against this run's ``config``."""
    if not os.path.isfile(path):
        raise ResumeError(f"resume: no file {path}")
    try:
        state = load_checkpoint(path, map_location="cpu")
    except Exception as error:
        raise ResumeError(f"resume: cannot read {path} ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(
            f"resume: {path} is not a resume state (a run writes those as "
            f"<Model>-<time>{LAST_SUFFIX} beside its best checkpoint)"
        )
    saved = state["config"]
    if (saved["model"], saved["dataset"]) != (config["model"], config["dataset"]):
        raise ResumeError(
            f"resume: {path} is a {saved['model']} run on {saved['dataset']}, not "
            f"{config['model']} on {config['dataset']}"
        )
    differences = config_differences(saved, config)
    if differences:
        raise ResumeError(
            f"resume: {path} was written with other settings: "
            f"{describe_differences(differences)}"
        )
    return state
