"""The few fixes RecBole 1.2.1 needs on today's numpy / torch / Python, kept in one place.

Each fix is narrow: it restores a name that was removed or allow-lists RecBole's own classes;
none of them changes behaviour for code that does not rely on RecBole.

* numpy >= 1.24 / 2.0 removed the aliases ``np.float``, ``np.int``, ``np.bool``, ``np.float_``,
  ``np.complex_``, ``np.unicode_`` ... that RecBole's Config, evaluator and layers use: we add
  back only the names that are missing, pointing at the types they always meant.
* torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole pickles its ``Config``
  (model class, yaml loader, pickle protocol 4) into every checkpoint, which the safe loader
  cannot read, so RecBole's ``Trainer.evaluate(load_best_model=True)`` and
  ``resume_checkpoint`` fail. :func:`load_checkpoint` reads such a file fully and
  :func:`recbole_checkpoint_loading` lets RecBole's own calls do so, only while they run; the
  plugin's ``Trainer`` and ``load_data_and_model`` use them for files a run wrote itself.
* ``recbole.quick_start`` imports ``ray`` at module level (and ray 2.6 needs ``pkg_resources``);
  this package never imports ``recbole.quick_start`` and re-implements its entry points in
  :mod:`recbole_semprune.quick_start`, so neither ray nor setuptools is needed at run time.
* importing ``recbole.model.sequential_recommender`` (which RecBole's model lookup always does)
  runs ``torch.autograd.set_detect_anomaly(True)`` at module level (``sine.py``), slowing every
  backward pass of every model several times: :func:`import_recbole_models` imports it once and
  puts anomaly detection back as it was.
* pandas 3 makes RecBole's in-place ``fillna`` a silent no-op: that one cannot be shimmed
  safely, so ``setup.cfg`` pins ``pandas<3`` and :func:`check_versions` refuses to run on it.
"""

import contextlib
import os
import warnings

import numpy as np

# name RecBole uses -> the type it meant (RecBole's own Config assigns the same ones)
_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
}


def restore_numpy_aliases():
    """Add back the numpy aliases RecBole 1.2.1 uses, where the installed numpy lacks them."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in vars(np):  # not getattr: numpy's module __getattr__ warns or raises
            setattr(np, name, value)


def load_checkpoint(path, map_location=None, mmap=False):
    """Load a RecBole checkpoint (a full pickle: only open files you or your runs wrote);
    ``mmap=True`` maps the tensors' storage instead of reading it (to read small parts)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)


@contextlib.contextmanager
def recbole_checkpoint_loading():
    """Within this block, ``torch.load`` calls that do not pass ``weights_only`` read full
    pickles (RecBole's checkpoints), as torch < 2.6 did; restored on exit."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            yield
    finally:
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous


def import_recbole_models():
    """Import RecBole's sequential models without leaving autograd anomaly detection on."""
    import torch

    anomaly = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(anomaly)


def check_versions():
    """Fail early, with the fix, on library versions that silently break RecBole 1.2.1."""
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        raise RuntimeError(
            f"pandas {pd.__version__} is installed, but RecBole 1.2.1 relies on in-place "
            "fillna, which pandas 3 ignores (missing features would stay NaN). "
            "Install pandas<3: pip install 'pandas<3'."
        )


def apply():
    check_versions()
    restore_numpy_aliases()
    import_recbole_models()
