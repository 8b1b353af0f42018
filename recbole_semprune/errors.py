"""Errors in what the user gave: a setting, a config file, a model or dataset name, a data file.

They are not bugs, so the run script prints them as one ``error:`` line and exits with status
2, without a traceback (``run_recbole_semprune.py``). ``recbole_semprune.quick_start`` raises
them before the dataset is loaded in full, before semantic IDs are built and before anything
is written (log, checkpoint or cache), wherever the check needs no data.

* :class:`UserInputError`: the family; the run script catches it.
* :class:`SettingsError`: a config key, command-line flag or config file is invalid.
* :class:`DatasetError`: a dataset's files are missing or hold what the config cannot read.
* ``recbole_semprune.utils.UnknownModelError``: no model of that name;
  ``recbole_semprune.distributed.DistributedSettingsError``: the multi-process keys.
"""


class UserInputError(Exception):
    """Something the user gave stops the run: the message says what and how to fix it."""


class SettingsError(UserInputError, ValueError):
    """A setting (config key, command-line flag, config file) is invalid."""


class DatasetError(UserInputError, FileNotFoundError):
    """A dataset is missing or lacks what its config asks for."""
