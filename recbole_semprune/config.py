"""Plugin configurator: RecBole's ``Config`` plus this package's model and dataset defaults.

Priority, lowest first: RecBole's own defaults (overall, its model yaml, its dataset yaml,
its quick-start settings), then ``properties/overall.yaml`` (plugin-wide settings),
``properties/protocol.yaml`` (the evaluation protocol of every dataset),
``properties/sid.yaml`` (semantic-ID settings), ``properties/model/<Model>.yaml`` and
``dataset_configs/<dataset>.yaml`` of this package, then the user's config files, config dict
and command line, exactly as in RecBole. Sequential models with ``loss_type: CE`` train
without sampled negatives (RecBole refuses them with CE) unless the user sets
``train_neg_sample_args``.

A config file that is missing, unreadable or not a yaml mapping, and a run without a model or
dataset name, raise :class:`~recbole_semprune.errors.SettingsError` (one line).

In a multi-process run (RecBole's ``local_rank`` is set, see docs/distributed.md) the device
set-up differs from RecBole 1.2.1's, which hard-codes NCCL: see :meth:`Config._init_device`.
"""

import os

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_semprune import compat
from recbole_semprune.checkpoint import earlier_behaviour
from recbole_semprune.errors import SettingsError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PROPERTIES_DIR = os.path.join(PACKAGE_DIR, "properties")
MODEL_PROPERTIES_DIR = os.path.join(PROPERTIES_DIR, "model")
PRESET_DIR = os.path.join(PROPERTIES_DIR, "preset")
DATASET_CONFIG_DIR = os.path.join(PACKAGE_DIR, "dataset_configs")
OVERALL_PROPERTIES_FILE = os.path.join(PROPERTIES_DIR, "overall.yaml")
SID_PROPERTIES_FILE = os.path.join(PROPERTIES_DIR, "sid.yaml")
PROTOCOL_FILE = os.path.join(PROPERTIES_DIR, "protocol.yaml")


def model_config_file(model_name):
    return os.path.join(MODEL_PROPERTIES_DIR, f"{model_name}.yaml")


def preset_names():
    return sorted(os.listdir(PRESET_DIR)) if os.path.isdir(PRESET_DIR) else []


def preset_file(preset, model_name):
    """The yaml of ``size_preset`` for a model (sizes between its own yaml and the dataset's);
    a model without one (RecBole's) runs at its own defaults."""
    if preset not in preset_names():
        raise ValueError(
            f"size_preset={preset!r} is not a preset: choose one of {', '.join(preset_names())}"
        )
    return os.path.join(PRESET_DIR, str(preset), f"{model_name}.yaml")


def dataset_config_file(dataset_name):
    return os.path.join(DATASET_CONFIG_DIR, f"{dataset_name}.yaml")


def read_config_file(path, loader=None):
    """The settings of one ``--config_files`` yaml as a dict (empty file: ``{}``).

    ``loader``: a yaml loader class (default: RecBole's, which also reads ``1e-3`` as a
    float). Raises :class:`SettingsError` naming the file (and line) if it is missing,
    unreadable, not valid yaml or not a mapping of keys to values.
    """
    if loader is None:
        loader = RecBoleConfig._build_yaml_loader(None)
    if not os.path.isfile(path):
        raise SettingsError(f"config file {path!r} not found (looked for {os.path.abspath(path)}).")
    try:
        with open(path, "r", encoding="utf-8") as f:
            content = yaml.load(f.read(), Loader=loader)
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"config file {path!r} cannot be read: {error}.") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SettingsError(f"config file {path!r}{where}: not valid yaml ({problem}).") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise SettingsError(
            f"config file {path!r} holds a {type(content).__name__}, not settings: write one "
            "'key: value' per line."
        )
    return content


def plugin_default_files(model_name):
    """The plugin's yaml defaults for a model, lowest priority first: plugin-wide settings, the
    evaluation protocol, the semantic-ID settings and the model's own yaml (if it has one)."""
    files = [OVERALL_PROPERTIES_FILE, PROTOCOL_FILE, SID_PROPERTIES_FILE,
             model_config_file(model_name)]
    return [file for file in files if os.path.isfile(file)]


def add_keys_added_since(config):
    """Complete ``config``, read from a checkpoint written by an earlier version of the plugin,
    with the plugin keys added since (those of ``properties/overall.yaml``, ``protocol.yaml``,
    ``sid.yaml`` and the model's yaml that it lacks) at the value that keeps the earlier
    behaviour (their yaml default, or ``checkpoint.EARLIER_BEHAVIOUR``), so the saved run reads
    as it ran. Returns the keys added."""
    added = []
    for file in plugin_default_files(config["model"]):
        for key, value in read_config_file(file).items():
            if key not in config.final_config_dict:
                config[key] = earlier_behaviour(key, value)
                added.append(key)
    return added


class Config(RecBoleConfig):
    """RecBole's Config, resolving models plugin-first and loading the plugin's yaml defaults.

    Same arguments as :class:`recbole.config.Config`; ``model`` may be a plugin model name, a
    RecBole model name or a model class.
    """

    def compatibility_settings(self):
        # RecBole's version assigns np.float_ etc., which numpy 2 no longer has.
        compat.restore_numpy_aliases()

    def _load_config_files(self, file_list):
        # RecBole's opens each file as is: a missing or broken one ends in a traceback
        settings = {}
        for file in file_list or []:
            settings.update(read_config_file(file, self.yaml_loader))
        return settings

    def _required(self, key, value):
        """``value``, else the config files' ``key`` (SettingsError when neither is set)."""
        value = self.external_config_dict.get(key) if value is None else value
        if value is None:
            raise SettingsError(
                f"No {key} given: pass --{key}=NAME on the command line, {key}= to the API, or "
                f"'{key}: NAME' in a config file."
            )
        return value

    def _get_model_and_dataset(self, model, dataset):
        from recbole_semprune.utils import get_model

        model = self._required("model", model)
        if isinstance(model, str):
            model_name, model_class = model, get_model(model)
        else:
            model_name, model_class = model.__name__, model
        dataset = self._required("dataset", dataset)
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        files = plugin_default_files(model)
        preset = self.external_config_dict.get("size_preset")
        if preset is not None and os.path.isfile(preset_file(preset, model)):
            files.append(preset_file(preset, model))
        for file in files:
            self._update_internal_config_dict(file)
        dataset_file = dataset_config_file(dataset)
        if os.path.isfile(dataset_file):
            dataset_dict = self._update_internal_config_dict(dataset_file) or {}
            self.parameters["Dataset"] += [
                key for key in dataset_dict if key not in self.parameters["Dataset"]
            ]
        loss_type = self.external_config_dict.get(
            "loss_type", self.internal_config_dict.get("loss_type")
        )
        if model_class.type == ModelType.SEQUENTIAL and loss_type == "CE":
            # a softmax over all items: RecBole refuses sampled negatives with it
            self.internal_config_dict["train_neg_sample_args"] = None

    def _set_default_parameters(self):
        super()._set_default_parameters()
        # RecBole always reads ml-100k from its own copy; a data_path given by the user that
        # holds an ml-100k folder of atomic files is used instead.
        user_path = self.external_config_dict.get("data_path")
        if self.dataset == "ml-100k" and user_path:
            folder = os.path.join(user_path, self.dataset)
            if os.path.isfile(os.path.join(folder, f"{self.dataset}.inter")):
                self.final_config_dict["data_path"] = folder

    def _init_device(self):
        """RecBole's device set-up, with a multi-process mode that also runs on CPUs.

        Single process (no ``local_rank``): RecBole's own. Multi-process: the backend comes
        from ``dist_backend`` (``auto``: NCCL on CUDA, gloo on CPU; RecBole 1.2.1 always asks
        for NCCL, which has no CPU support), the keys are checked with clear errors (RecBole
        asserts ``len(gpu_id) >= nproc`` even on CPU), ``use_gpu: False`` runs on CPU, and CPU
        processes share the machine's cores. As in RecBole, ranks other than each machine's
        local rank 0 log errors only and show no progress bars.
        """
        config = self.final_config_dict
        if "local_rank" not in config:
            return super()._init_device()
        import torch

        from recbole_semprune import distributed

        gpu_id = config["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
        config["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        nproc = config["nproc"] if config.get("nproc") is not None else 1
        offset = config.get("offset") or 0
        ip, port = config.get("ip") or "localhost", config.get("port") or 5678
        world_size = distributed.check_settings(nproc, config.get("world_size"), offset, port)
        local_rank = config["local_rank"]
        if not 0 <= local_rank < nproc:
            raise distributed.DistributedSettingsError(
                f"local_rank={local_rank} is outside 0...{nproc - 1} (nproc={nproc})."
            )
        use_cuda = bool(config["use_gpu"]) and len(gpu_id) > 0 and torch.cuda.is_available()
        if use_cuda and torch.cuda.device_count() < nproc:
            raise distributed.DistributedSettingsError(
                f"nproc={nproc} processes need {nproc} GPUs (one each), but gpu_id='{gpu_id}' "
                f"makes {torch.cuda.device_count()} visible: list {nproc} GPUs, e.g. "
                f"--gpu_id='{','.join(map(str, range(nproc)))}', or train on CPU processes "
                "with --use_gpu=False."
            )
        backend = distributed.resolve_backend(config.get("dist_backend"), use_cuda)
        rank = offset + local_rank
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if torch.distributed.is_initialized():  # a second Config in the same process
            if (torch.distributed.get_rank(), torch.distributed.get_world_size()) != (
                rank, world_size
            ):
                raise distributed.DistributedSettingsError(
                    f"This process already belongs to a process group as rank "
                    f"{torch.distributed.get_rank()} of {torch.distributed.get_world_size()}, "
                    f"not rank {rank} of {world_size}."
                )
        else:
            torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                                 init_method=f"tcp://{ip}:{port}")
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        config.update(world_size=world_size, offset=offset, nproc=nproc, ip=ip, port=port,
                      dist_backend=backend, single_spec=False, device=device)
        if not use_cuda:
            distributed.set_cpu_threads(nproc)
        if local_rank != 0:
            config["state"] = "error"
            config["show_progress"] = False
            config["verbose"] = False
