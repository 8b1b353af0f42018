"""On-disk cache of semantic IDs.

A cache file holds plain tensors, lists and dicts (``torch.load(..., weights_only=True)``
reads it) and is named by a hash of everything the codes depend on: the dataset name, the
atomic files actually read (name, size, content hash), the item tokens in internal-id order,
the item text, the training interactions (when collaborative vectors are used or collision
groups are split), the embedding file (backend ``file``), the sentence model's files (backend
``sentence``) and every setting that changes the result. Change any of them and the
key changes, so a stale file is never reused.
"""

import hashlib
import json
import logging
import os

import torch

# Bump when a code change alters the codes produced for the same inputs.
CACHE_VERSION = 2


def file_fingerprint(path):
    """``{name, size, sha1}`` of a file, or ``{name, missing: True}``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return {"name": name, "missing": True}
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": name, "size": os.path.getsize(path), "sha1": digest.hexdigest()}


def folder_fingerprint(folder):
    """:func:`file_fingerprint` of every file below ``folder``, by relative path."""
    fingerprints = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            fingerprint = file_fingerprint(path)
            fingerprint["name"] = os.path.relpath(path, folder)
            fingerprints.append(fingerprint)
    return fingerprints


def dataset_files(dataset):
    """The atomic files RecBole read for ``dataset``: its .inter file(s) and its .item file."""
    name, folder = dataset.dataset_name, dataset.dataset_path
    benchmark = dataset.config["benchmark_filename"]
    files = (
        [os.path.join(folder, f"{name}.{part}.inter") for part in benchmark]
        if benchmark
        else [os.path.join(folder, f"{name}.inter")]
    )
    if dataset.item_feat is not None:
        files.append(os.path.join(folder, f"{name}.item"))
    return files


def hash_strings(strings):
    digest = hashlib.sha1()
    for string in strings:
        digest.update(str(string).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def cache_key(parts):
    """sha1 of the JSON of ``parts`` (a dict of JSON-able values), with the cache version."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def cache_path(cache_dir, dataset_name, settings, key):
    filename = (
        f"{dataset_name}-{settings['sid_embedding']}-{settings['sid_quantizer']}-{key[:16]}.pt"
    )
    return os.path.join(cache_dir, filename)


def save(path, key, codes, level_sizes, meta):
    """Write atomically (a temporary file, then rename) so readers never see half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    torch.save(
        {"key": key, "codes": codes.clone(), "level_sizes": list(level_sizes), "meta": meta},
        temporary,
    )
    os.replace(temporary, path)


def load(path, key, item_num, num_levels):
    """``(codes, level_sizes, meta)`` from ``path``, or None if absent, unreadable or stale."""
    if not os.path.isfile(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: rebuild it
        logging.getLogger().warning(f"Ignoring unreadable semantic-ID cache {path}: {error}")
        return None
    if not isinstance(saved, dict):
        saved = {}
    codes = saved.get("codes")
    if (
        saved.get("key") != key
        or not isinstance(codes, torch.Tensor)
        or tuple(codes.shape) != (item_num, num_levels)
    ):
        logging.getLogger().warning(
            f"Ignoring semantic-ID cache {path}: it does not match this run."
        )
        return None
    return codes.long(), list(saved["level_sizes"]), dict(saved["meta"])
