"""Model / trainer / dataset lookup: this plugin first, then RecBole, with clear errors."""

import difflib
import importlib
import os
import pkgutil

from recbole.data import create_dataset as recbole_create_dataset
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


class UnknownModelError(ValueError):
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


def get_trainer(model_type, model_name):
    """Trainer class: a model's own ``trainer_class``, else RecBole's choice; RecBole's plain
    ``Trainer`` is replaced by the plugin's, which also logs throughput and peak memory, and
    its other trainers get the torch >= 2.6 checkpoint fix."""
    from recbole.trainer import Trainer as RecBoleTrainer

    from recbole_semprune.trainer import Trainer, with_checkpoint_loading

    model_trainer = getattr(get_model(model_name), "trainer_class", None)
    if model_trainer is not None:
        return model_trainer
    trainer = recbole_get_trainer(model_type, model_name)
    return Trainer if trainer is RecBoleTrainer else with_checkpoint_loading(trainer)


class DatasetError(FileNotFoundError):
    """A dataset is missing or lacks what its config asks for."""


def _atomic_header(path):
    with open(path, "r", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    return [column.split(":")[0] for column in header]


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
    """Fail before RecBole does (it would try to download, or silently drop fields)."""
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
    for suffix, fields in (config["load_col"] or {}).items():
        atomic_file = os.path.join(path, f"{name}.{suffix}")
        if not os.path.isfile(atomic_file):
            raise DatasetError(
                f"The config loads {suffix} fields {list(fields)} for dataset '{name}', but "
                f"{os.path.abspath(atomic_file)} does not exist. Provide the file or remove "
                f"'{suffix}' from load_col."
            )
        have = _atomic_header(atomic_file)
        missing = [field for field in fields if field not in have]
        if missing:
            raise DatasetError(
                f"{os.path.abspath(atomic_file)} has no field(s) {missing} that the config's "
                f"load_col asks for (dataset_configs/{name}.yaml or your own config). "
                f"Its fields are: {have}."
            )


def create_dataset(config):
    """RecBole's ``create_dataset``, with a plugin dataset class where a model declares one."""
    check_dataset_files(config)
    dataset_class = getattr(get_model(config["model"]), "dataset_class", None)
    if dataset_class is not None:
        return dataset_class(config)
    if (config["train_rows"] or "prefix") != "prefix":
        raise ValueError(
            f"train_rows: {config['train_rows']} is a setting of this plugin's SID datasets; "
            f"{config['model']} uses RecBole's own dataset, which always makes one training row "
            "per prefix. Remove train_rows for this model."
        )
    return recbole_create_dataset(config)
