"""The few fixes RecBole 1.2.1 needs on today's numpy / torch / Python, kept in one place.

Each fix is narrow: it restores a name that was removed or allow-lists RecBole's own classes;
none of them changes behaviour for code that does not rely on RecBole.

* numpy >= 1.24 / 2.0 removed the aliases ``np.float``, ``np.int``, ``np.bool``, ``np.float_``,
  ``np.complex_``, ``np.unicode_`` ... that RecBole's Config, evaluator and layers use: we add
  back only the names that are missing, pointing at the types they always meant.
* torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole pickles its ``Config``
  (with enums and ``torch.device``) into every checkpoint, so its own ``Trainer.evaluate
  (load_best_model=True)`` and ``resume_checkpoint`` fail. We allow-list exactly the classes a
  RecBole checkpoint holds (``torch.serialization.add_safe_globals``), which keeps the safe
  loader for everything else.
* ``recbole.quick_start`` imports ``ray`` at module level (and ray 2.6 needs ``pkg_resources``);
  this package never imports ``recbole.quick_start`` and re-implements its entry points in
  :mod:`recbole_semprune.quick_start`, so neither ray nor setuptools is needed at run time.
* pandas 3 makes RecBole's in-place ``fillna`` a silent no-op: that one cannot be shimmed
  safely, so ``setup.cfg`` pins ``pandas<3`` and :func:`check_versions` refuses to run on it.
"""

import numpy as np

_NUMPY_ALIASES = {
    # name RecBole uses -> what it always meant
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
    "long": int,
    "unicode": str,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "int_": np.int64,
    "bool_": np.bool_,
    "object_": np.object_,
    "str_": np.str_,
}


def _has_attr(module, name):
    try:
        getattr(module, name)
        return True
    except AttributeError:
        return False


def restore_numpy_aliases():
    """Add back the numpy aliases RecBole 1.2.1 uses, where the installed numpy lacks them."""
    for name, value in _NUMPY_ALIASES.items():
        if not _has_attr(np, name):
            setattr(np, name, value)


def allow_recbole_checkpoints():
    """Let ``torch.load(..., weights_only=True)`` read RecBole checkpoints (they pickle Config)."""
    import torch

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads full pickles by default
        return
    from recbole.config import Config
    from recbole.utils import enum_type

    from recbole_semprune.config import Config as PluginConfig

    enums = [
        getattr(enum_type, name)
        for name in dir(enum_type)
        if isinstance(getattr(enum_type, name), type)
        and issubclass(getattr(enum_type, name), enum_type.Enum)
        and getattr(enum_type, name) is not enum_type.Enum
    ]
    add_safe_globals([Config, PluginConfig, torch.device, set, *enums])


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
