"""Model / trainer / dataset lookup: this plugin first, then RecBole, with clear errors."""

import difflib
import importlib
import os
import pkgutil

from recbole.data import create_dataset as recbole_create_dataset
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_semprune.data import protocol
from recbole_semprune.data.dataset import SIDSequentialDataset, train_rows_mode
from recbole_semprune.errors import DatasetError, SettingsError, UserInputError
from recbole_semprune.model.sid_recommender import SIDRecommender

RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


class UnknownModelError(UserInputError, ValueError):
    """No plugin or RecBole model has the requested name."""


def plugin_models():
    """``{name: class}`` of the models this plugin registers."""
    from recbole_semprune import model as plugin_model_package

    return {
        name: obj
        for name in getattr(plugin_model_package, "__all__", [])
        for obj in [getattr(plugin_model_package, name)]
        if isinstance(obj, type) and issubclass(obj, AbstractRecommender)
    }


def recbole_model_names():
    """Class names of RecBole's built-in models (imports them; only used to report errors)."""
    names = []
    for package in RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except ImportError:  # optional dependencies of RecBole (xgboost, lightgbm)
            continue
        for info in pkgutil.iter_modules(module.__path__):
            try:
                submodule = importlib.import_module(f"recbole.model.{package}.{info.name}")
            except ImportError:  # optional dependencies of RecBole (xgboost, lightgbm)
                continue
            names += [
                attr
                for attr in dir(submodule)
                if attr.lower() == info.name
                and isinstance(getattr(submodule, attr), type)
                and issubclass(getattr(submodule, attr), AbstractRecommender)
            ]
    return sorted(set(names))


def get_model(model_name):
    """Model class by name: this plugin's models first, then RecBole's."""
    plugin = plugin_models()
    if model_name in plugin:
        return plugin[model_name]
    try:
        return recbole_get_model(model_name)
    except (ValueError, AttributeError, ImportError):  # RecBole's lookup imports exlib models
        pass
    recbole_names = recbole_model_names()
    known = sorted(plugin) + recbole_names
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.6)
    close += [name for name in known if name.lower() == model_name.lower() and name not in close]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{model_name}'.{hint}\n"
        f"  recbole_semprune models: {', '.join(sorted(plugin))}\n"
        f"  RecBole models: {', '.join(recbole_names)}"
    )


def is_sid_model(model_class):
    """Whether ``model_class`` is one of this plugin's SID models (which declare what they
    need from the data and check their settings: :class:`SIDRecommender`)."""
    return isinstance(model_class, type) and issubclass(model_class, SIDRecommender)


def get_trainer(model_type, model_name):
    """Trainer class: RecBole's choice, where RecBole's plain ``Trainer`` is replaced by the
    plugin's, which also logs throughput and peak memory, and its other trainers get the
    torch >= 2.6 checkpoint fix."""
    from recbole.trainer import Trainer as RecBoleTrainer

    from recbole_semprune.trainer import Trainer, with_checkpoint_loading

    trainer = recbole_get_trainer(model_type, model_name)
    return Trainer if trainer is RecBoleTrainer else with_checkpoint_loading(trainer)


__all__ = ["DatasetError", "UnknownModelError", "check_dataset_files", "create_dataset",
           "get_model", "get_trainer", "check_train_rows", "check_negative_sampling", "is_sid_model"]


def _how_to_get(dataset_name):
    if dataset_name.startswith("amazon-"):
        return (
            "Build it from the raw McAuley Amazon 2014 files with "
            f"`python -m recbole_semprune.data.amazon --reviews reviews_<Category>_5.json.gz "
            f"--meta meta_<Category>.json.gz --output <data_path> --name {dataset_name}` "
            "(see docs/datasets.md)."
        )
    return (
        f"Put RecBole atomic files ({dataset_name}.inter, and .item/.user if the config loads "
        "item or user features) in that folder, e.g. from RecBole's collection of atomic "
        "datasets, or point --data_path at the folder that holds it."
    )


def check_dataset_files(config):
    """Fail before RecBole does, in one line (it would try to download, silently drop fields
    or stop on a bad value with a pandas traceback): the files exist, their headers are
    well-formed and hold the fields ``load_col`` asks for and the protocol needs (user, item,
    and time for a sequential model or a time-ordered split), and every value of a loaded
    numeric field is a number. Raises :class:`DatasetError`."""
    name, path = config["dataset"], config["data_path"]
    inter_file = os.path.join(path, f"{name}.inter")
    if not os.path.isfile(inter_file):
        parent = os.path.dirname(os.path.normpath(path))
        found = (
            sorted(
                d
                for d in os.listdir(parent)
                if os.path.isfile(os.path.join(parent, d, f"{d}.inter"))
            )
            if os.path.isdir(parent)
            else []
        )
        raise DatasetError(
            f"Dataset '{name}' not found: looked for {os.path.abspath(inter_file)}. "
            + _how_to_get(name)
            + (f" Datasets found in {os.path.abspath(parent)}: {', '.join(found)}." if found else "")
        )
    load_col = config["load_col"] or {}
    for suffix, fields in load_col.items():
        atomic_file = os.path.join(path, f"{name}.{suffix}")
        if not os.path.isfile(atomic_file):
            raise DatasetError(
                f"The config loads {suffix} fields {list(fields)} for dataset '{name}', but "
                f"{os.path.abspath(atomic_file)} does not exist. Provide the file or remove "
                f"'{suffix}' from load_col."
            )
        have = list(protocol.atomic_header(config, atomic_file))
        missing = [field for field in fields if field not in have] if fields != "*" else []
        if missing:
            raise DatasetError(
                f"{os.path.abspath(atomic_file)} has no field(s) {missing} that the config's "
                f"load_col asks for (dataset_configs/{name}.yaml or your own config). "
                f"Its fields are: {have}."
            )
    _check_protocol_fields(config, inter_file)
    for suffix in protocol.SUFFIXES:
        atomic_file = protocol.atomic_file(config, suffix)
        if os.path.isfile(atomic_file) and (config["load_col"] is None or suffix in load_col):
            header = protocol.atomic_header(config, atomic_file)
            fields = protocol.loaded_fields(config, suffix, header)
            protocol.check_numeric_values(config, atomic_file, header, fields)


def _check_protocol_fields(config, inter_file):
    """The user and item id, and the time where the protocol orders by it, are loaded."""
    from recbole.utils import ModelType

    header = protocol.atomic_header(config, inter_file)
    loaded = protocol.loaded_fields(config, "inter", header)
    eval_args = config["eval_args"] or {}
    ordered = eval_args.get("order") == "TO" or config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    needed = [("USER_ID_FIELD", "the user id"), ("ITEM_ID_FIELD", "the item id")]
    if ordered:
        needed.append(("TIME_FIELD", "the time each user's interactions are ordered by"))
    for key, what in needed:
        field = config[key]
        if field in loaded:
            continue
        if field in header:
            raise SettingsError(
                f"load_col does not load '{field}' ({key}: {what}) from {inter_file}: add it "
                f"to load_col, e.g. load_col: {{inter: {loaded + [field]}}}."
            )
        raise DatasetError(
            f"{inter_file} has no field '{field}' ({key}: {what}); its fields are "
            f"{list(header)}. Name the column {field}, or set {key} to the name of yours."
            + (
                " Without a time, give each user's interactions increasing numbers in "
                "their order (e.g. 0, 1, 2 ...) as timestamp:float."
                if key == "TIME_FIELD"
                else ""
            )
        )


def check_negative_sampling(config):
    """A model trained on (positive, negative) pairs gets negatives (SettingsError otherwise;
    RecBole would stop on a KeyError for ``neg_item_id`` in the first batch)."""
    from recbole.utils import InputType

    sampling = config["train_neg_sample_args"] or {}
    if config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE and sampling.get("distribution") == "none":
        raise SettingsError(
            f"{config['model']} trains on (positive, negative) pairs, but train_neg_sample_args "
            "is ~ (no negatives): remove that setting, or set train_neg_sample_args: "
            "{distribution: uniform, sample_num: 1}."
        )


def check_train_rows(config):
    """``train_rows`` against the model (ValueError): ``user`` needs a SID model with a
    next-token loss on the whole stream."""
    model_class = get_model(config["model"])
    dense = model_class.dense_stream_loss(config) if is_sid_model(model_class) else None
    return train_rows_mode(config, dense)


def create_dataset(config, check_files=True):
    """RecBole's ``create_dataset``; a SID model gets :class:`SIDSequentialDataset` with what
    its class declares it needs (``future_items``, ``dense_stream_loss``).

    ``check_files``: run :func:`check_dataset_files` first (False where the caller did).
    """
    if check_files:
        check_dataset_files(config)
    model_class = get_model(config["model"])
    if is_sid_model(model_class):
        return SIDSequentialDataset(config, model_class.future_items(config),
                                    model_class.dense_stream_loss(config))
    check_train_rows(config)
    return recbole_create_dataset(config)
