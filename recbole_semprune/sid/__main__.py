"""Build (or load from the cache) the semantic IDs of a dataset and print their diagnostics.

Usage::

    python -m recbole_semprune.sid --dataset=ml-100k [--model=TIGER] \\
        [--config_files="a.yaml b.yaml"] [--sid_codebook_size=64 ...]

Every ``--key=value`` is a config setting (values are parsed as Python literals where they
can be, as RecBole does). The dataset is split as the config says (``eval_args``) and the
training split feeds the collaborative part, exactly as when a model is trained.
"""

import ast
import sys

from recbole.utils import init_logger, init_seed

DEFAULT_MODEL = "TIGER"


def parse_value(text):
    """``'3'`` -> 3, ``'[a, b]'``-like Python literals -> values, true/false/none, else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null", "~"):
            return None
        return text


def parse_args(argv):
    """``(model, dataset, config_files, config_dict)`` from ``--key=value`` arguments."""
    options = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(
                f"Unrecognised argument '{arg}': every argument is --key=value "
                "(e.g. --dataset=ml-100k --sid_codebook_size=64)."
            )
        key, value = arg[2:].split("=", 1)
        options[key] = value
    if "dataset" not in options:
        raise SystemExit("Missing --dataset=NAME (e.g. --dataset=ml-100k).")
    model = options.pop("model", DEFAULT_MODEL)
    dataset = options.pop("dataset")
    config_files = options.pop("config_files", "").split() or None
    config_dict = {key: parse_value(value) for key, value in options.items()}
    return model, dataset, config_files, config_dict


def main(argv=None):
    from recbole_semprune.config import Config
    from recbole_semprune.sid.tokenizer import build_semantic_ids, diagnostics_table
    from recbole_semprune.utils import create_dataset

    argv = sys.argv[1:] if argv is None else argv
    model, dataset_name, config_files, config_dict = parse_args(argv)
    # RecBole's Config also parses sys.argv; hide it so `argv` (as parsed above) is the only
    # source of command-line settings, also when main() is called from Python.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        config = Config(
            model=model,
            dataset=dataset_name,
            config_file_list=config_files,
            config_dict=config_dict,
        )
    finally:
        sys.argv = saved_argv
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_dataset = dataset.build()[0]
    sids = build_semantic_ids(config, train_dataset)

    print(f"Semantic IDs of {dataset_name}: {sids.num_levels} levels, sizes {sids.level_sizes}")
    for line in diagnostics_table(sids.meta):
        print(line)
    return sids


if __name__ == "__main__":
    main()
