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
* RecBole's own lines raise FutureWarnings on pandas 2.2+ and torch 2.4+ (about 25 lines per
  run): its chained in-place ``fillna`` and ``Series.agg(len)`` (data/dataset/dataset.py;
  both still do what RecBole means on pandas 2, and pandas 3 is refused) and
  ``torch.cuda.amp.GradScaler(...)`` (trainer/trainer.py; the same object as
  ``torch.amp.GradScaler("cuda", ...)``). The cause is in RecBole, so
  :func:`silence_recbole_future_warnings` filters exactly these messages, and only when they
  come from RecBole's modules; this package's own code raises none.
* ``recbole.utils.case_study.full_sort_topk`` takes the top ``k`` of ``full_sort_predict``; a
  SID model scores only the ``beam_size`` items of its beam search (the others -inf), so a
  ``k`` above ``beam_size`` silently returned arbitrary -inf items. :func:`full_sort_topk`
  (installed in RecBole's module by :func:`apply`) warns and searches with ``k`` beams for
  that call.
* scipy >= 1.13 dropped ``dok_matrix._update``, with which RecBole's graph models (LightGCN,
  NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) fill their adjacency matrix: they all stopped on
  an AttributeError. :func:`restore_dok_update` adds it back where it is missing, as the plain
  update of the stored entries it always was.
* ``HyperTuning(algo="exhaustive")`` draws its grid points with ``np.random.RandomState``,
  while hyperopt >= 0.2.7 (the only releases on Python >= 3.10) calls the ``Generator`` method
  ``rng.integers``: every exhaustive search ended in an AttributeError.
  :func:`patch_exhaustive_search` gives RecBole's tuning module a ``RandomState`` that also
  answers ``integers`` (same draws as ``randint``).
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


def _dok_update(self, entries):
    """``dok_matrix._update`` of scipy < 1.13: store ``{(row, col): value}`` unchecked (the
    scipy versions without it keep the entries in ``_dict``)."""
    self._dict.update(entries)


def restore_dok_update():
    """Give scipy's ``dok_matrix`` its ``_update`` back where the installed scipy lacks it."""
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update


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


# (message start, RecBole module) of the FutureWarnings RecBole 1.2.1 raises on today's
# pandas / torch; see the module doc
_RECBOLE_FUTURE_WARNINGS = (
    ("A value is trying to be set on a copy of a DataFrame or Series through chained assignment",
     r"recbole\.data\."),
    (r"using <built-in function len> in Series\.agg cannot aggregate", r"recbole\.data\."),
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"recbole\.trainer\."),
)


def silence_recbole_future_warnings():
    """Ignore the FutureWarnings of RecBole's own code listed in the module doc."""
    for message, module in _RECBOLE_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


def full_sort_topk(uid_series, model, test_data, k, device=None):
    """RecBole's ``full_sort_topk`` that never returns items outside a SID model's beam: with
    ``k`` above the model's ``beam_size`` it warns and searches with ``k`` beams this once."""
    import torch
    from recbole.utils.case_study import full_sort_scores

    beam_size = getattr(model, "beam_size", None)
    widen = isinstance(beam_size, int) and k > beam_size
    if widen:
        warnings.warn(
            f"full_sort_topk: k={k} is larger than {type(model).__name__}'s beam_size="
            f"{beam_size}, and beam search ranks only beam_size items (the others score -inf): "
            f"this call searches with {k} beams. Set model.beam_size (or the beam_size key) "
            "to choose.",
            UserWarning,
            stacklevel=2,
        )
        model.beam_size = k
    try:
        return torch.topk(full_sort_scores(uid_series, model, test_data, device), k)
    finally:
        if widen:
            model.beam_size = beam_size


def patch_full_sort_topk():
    """Install :func:`full_sort_topk` in ``recbole.utils.case_study``."""
    from recbole.utils import case_study

    case_study.full_sort_topk = full_sort_topk


class _HyperoptRandomState(np.random.RandomState):
    """A RandomState that also has the Generator method hyperopt >= 0.2.7 calls."""

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        if endpoint:
            low, high = (0, low + 1) if high is None else (low, high + 1)
        return self.randint(low, high, size, dtype)


class _TuningNumpy:
    """numpy as seen by ``recbole.trainer.hyper_tuning``: its ``random.RandomState`` is
    :class:`_HyperoptRandomState`, everything else is numpy's."""

    random = type("random", (), {"RandomState": _HyperoptRandomState})

    def __getattr__(self, name):
        return getattr(np, name)


def patch_exhaustive_search():
    """Let RecBole's exhaustive search run on hyperopt >= 0.2.7 (see the module doc)."""
    from recbole.trainer import hyper_tuning

    hyper_tuning.np = _TuningNumpy()


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
    restore_dok_update()
    silence_recbole_future_warnings()
    import_recbole_models()
    patch_full_sort_topk()
    patch_exhaustive_search()
