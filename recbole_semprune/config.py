"""Plugin configurator: RecBole's ``Config`` plus this package's model and dataset defaults.

Priority, lowest first: RecBole's own defaults (overall, its model yaml, its dataset yaml,
its quick-start settings), then ``properties/sid.yaml`` (semantic-ID settings),
``properties/model/<Model>.yaml`` and ``dataset_configs/<dataset>.yaml`` of this package, then
the user's config files, config dict and command line, exactly as in RecBole.
"""

import os

from recbole.config import Config as RecBoleConfig

from recbole_semprune import compat

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PROPERTIES_DIR = os.path.join(PACKAGE_DIR, "properties")
MODEL_PROPERTIES_DIR = os.path.join(PROPERTIES_DIR, "model")
DATASET_CONFIG_DIR = os.path.join(PACKAGE_DIR, "dataset_configs")
SID_PROPERTIES_FILE = os.path.join(PROPERTIES_DIR, "sid.yaml")


def model_config_file(model_name):
    return os.path.join(MODEL_PROPERTIES_DIR, f"{model_name}.yaml")


def dataset_config_file(dataset_name):
    return os.path.join(DATASET_CONFIG_DIR, f"{dataset_name}.yaml")


class Config(RecBoleConfig):
    """RecBole's Config, resolving models plugin-first and loading the plugin's yaml defaults.

    Same arguments as :class:`recbole.config.Config`; ``model`` may be a plugin model name, a
    RecBole model name or a model class.
    """

    def compatibility_settings(self):
        # RecBole's version assigns np.float_ etc., which numpy 2 no longer has.
        compat.restore_numpy_aliases()

    def _get_model_and_dataset(self, model, dataset):
        from recbole_semprune.utils import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError(
                    "No model given: pass --model=NAME on the command line, model= to the API, "
                    "or 'model: NAME' in a config file."
                )
        if isinstance(model, str):
            model_name, model_class = model, get_model(model)
        else:
            model_name, model_class = model.__name__, model
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError(
                    "No dataset given: pass --dataset=NAME on the command line, dataset= to the "
                    "API, or 'dataset: NAME' in a config file."
                )
        return model_name, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in (SID_PROPERTIES_FILE, model_config_file(model)):
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        dataset_file = dataset_config_file(dataset)
        if os.path.isfile(dataset_file):
            dataset_dict = self._update_internal_config_dict(dataset_file) or {}
            self.parameters["Dataset"] += [
                key for key in dataset_dict if key not in self.parameters["Dataset"]
            ]
