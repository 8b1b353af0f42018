"""A dataset's atomic files, read before RecBole loads them, and the protocol of a dataset that
has no dataset config.

RecBole reads an atomic file (``<name>.inter``, ``.item``, ``.user``) in one go and reports a
bad header or value with a traceback from pandas; a field that ``load_col`` leaves out is
silently missing later. These functions read the headers (and, for numeric fields, the values)
first, so that :func:`recbole_semprune.utils.check_dataset_files` can stop a run with one line
that names the file, field and line.

A dataset without ``dataset_configs/<name>.yaml`` gets the protocol of every dataset
(``properties/protocol.yaml``: leave-one-out in time order, full ranking) and, unless the user
sets ``load_col``, every field of its atomic files (:func:`complete_protocol`), so that two
files with ordinary headers run as they are. Nothing here imports a model.
"""

import csv
import os

import pandas as pd
from recbole.utils import FeatureType

from recbole_semprune.errors import DatasetError

# the atomic files a dataset's fields come from (RecBole's names), in the order they are read
SUFFIXES = ("inter", "item", "user")
TEXT_TYPES = (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)
NUMERIC_TYPES = (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)


def atomic_file(config, suffix):
    """Path of the dataset's ``<name>.<suffix>`` file (it may not exist)."""
    return os.path.join(config["data_path"], f"{config['dataset']}.{suffix}")


def _separator(config):
    return config["field_separator"] or "\t"


def _encoding(config):
    return config["encoding"] or "utf-8"


def atomic_header(config, path):
    """``{field: FeatureType}`` of an atomic file's header (``name:type`` columns, in order).

    Raises :class:`DatasetError` naming the file and column when a column has no type or a
    type RecBole does not know.
    """
    with open(path, "r", encoding=_encoding(config)) as f:
        line = f.readline().rstrip("\n")
    header = {}
    for column in line.split(_separator(config)):
        name, _, type_name = column.partition(":")
        try:
            header[name] = FeatureType(type_name)
        except ValueError:
            known = ", ".join(t.value for t in FeatureType)
            hint = (
                " The file has Windows line endings (\\r\\n): convert them to \\n."
                if type_name.endswith("\r")
                else ""
            )
            raise DatasetError(
                f"{path}, line 1: column {column!r} needs a type, written name:type with type "
                f"one of {known} (e.g. {name or 'timestamp'}:float).{hint}"
            ) from None
    return header


def loaded_fields(config, suffix, header):
    """The fields of ``header`` that RecBole loads from the ``suffix`` file under the config's
    ``load_col`` / ``unload_col`` (RecBole's rules: ``load_col: ~`` or ``'*'`` loads all)."""
    load_col, unload_col = config["load_col"], config["unload_col"] or {}
    if load_col is None or load_col.get(suffix) == "*":
        fields = list(header)
    else:
        fields = [field for field in header if field in (load_col.get(suffix) or [])]
    return [field for field in fields if field not in (unload_col.get(suffix) or [])]


def check_numeric_values(config, path, header, fields):
    """Every value of the ``float`` / ``float_seq`` ``fields`` of an atomic file is a number
    (or empty); else :class:`DatasetError` with the file, field, line and value."""
    numeric = [field for field in fields if header[field] in NUMERIC_TYPES]
    if not numeric:
        return
    columns = [f"{field}:{header[field].value}" for field in numeric]
    values = pd.read_csv(
        path, sep=_separator(config), usecols=columns, dtype=str, encoding=_encoding(config),
        quoting=csv.QUOTE_MINIMAL,
    )
    for field, column in zip(numeric, columns):
        series = values[column].dropna()
        if header[field] == FeatureType.FLOAT_SEQ:
            series = series.str.split(config["seq_separator"] or " ").explode()
            series = series[series != ""]
        bad = series[pd.to_numeric(series, errors="coerce").isna() & series.notna()]
        if len(bad):
            row = int(bad.index[0])
            raise DatasetError(
                f"{path}, field {field}, line {row + 2}: {bad.iloc[0]!r} is not a number, but the "
                f"header declares {field}:{header[field].value}. Fix the value, or declare the "
                f"field as {field}:token if it is not a number."
            )


def complete_protocol(config, has_dataset_config):
    """For a dataset without a dataset config (``has_dataset_config`` False) whose
    ``load_col`` the user did not set: load every field of its ``.inter``, ``.item`` and
    ``.user`` files (read from their headers).

    Sets ``config['load_col']``; returns the log lines that say what was chosen (empty when
    nothing was). A missing ``.inter`` file is left to :func:`check_dataset_files`.
    """
    if has_dataset_config or not os.path.isfile(atomic_file(config, "inter")):
        return []
    name = config["dataset"]
    lines = [
        f"Dataset '{name}' has no dataset config (dataset_configs/{name}.yaml): it gets the "
        f"protocol of properties/protocol.yaml (leave-one-out in time order, full ranking, "
        f"valid_metric {config['valid_metric']}) and MAX_ITEM_LIST_LENGTH="
        f"{config['MAX_ITEM_LIST_LENGTH']}."
    ]
    if "load_col" in getattr(config, "external_config_dict", {}):
        return lines
    load_col = {
        suffix: list(atomic_header(config, atomic_file(config, suffix)))
        for suffix in SUFFIXES
        if os.path.isfile(atomic_file(config, suffix))
    }
    config["load_col"] = load_col
    lines.append(
        "load_col read from the atomic files' headers (set load_col to choose): "
        + "; ".join(f"{suffix}: {', '.join(fields)}" for suffix, fields in load_col.items())
    )
    return lines


def item_text_fields(config):
    """``(loaded, left_out)``: the token / token_seq fields of the ``.item`` file (without the
    item id) that ``load_col`` loads, and those it leaves out. Both empty without a file."""
    path = atomic_file(config, "item")
    if not os.path.isfile(path):
        return [], []
    header = atomic_header(config, path)
    iid = config["ITEM_ID_FIELD"]
    text = [field for field, kind in header.items() if kind in TEXT_TYPES and field != iid]
    loaded = loaded_fields(config, "item", header)
    return [f for f in text if f in loaded], [f for f in text if f not in loaded]
