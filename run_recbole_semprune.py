"""Run a recbole_semprune or RecBole model, with the flags of RecBole's run_recbole.py.

    python run_recbole_semprune.py --model=RASTP --dataset=amazon-beauty --data_path=../shared/datasets
    python run_recbole_semprune.py --model=SASRec --dataset=ml-100k --epochs=5
    python run_recbole_semprune.py --model=SASRec --dataset=ml-100k --epochs=5 --resume=True
    python run_recbole_semprune.py --model=TIGER --dataset=ml-100k --max_steps=200

Any other ``--key=value`` is a RecBole / plugin config key and overrides the yaml defaults
(``--max_steps=N``: training stops after N optimisation steps).
Without ``--model`` / ``--dataset``, the ``model:`` / ``dataset:`` keys of the config files
are used, else RecBole's defaults (BPR on ml-100k). A bad setting, config file, model name or
data file ends the run with one ``error:`` line and exit status 2, before anything is loaded
in full or written.
"""

import argparse

from recbole_semprune.errors import UserInputError
from recbole_semprune.quick_start import file_settings, run

# RecBole's run_recbole.py defaults, used when neither the flag nor a config file names one
DEFAULTS = {"model": "BPR", "dataset": "ml-100k"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default=None,
                        help="name of model (default: the config files' model, else BPR)")
    parser.add_argument("--dataset", "-d", type=str, default=None,
                        help="name of dataset (default: the config files' dataset, else ml-100k)")
    parser.add_argument("--config_files", type=str, default=None, help="config files, space separated")
    # multi-process training (docs/distributed.md); unset: the config's nproc / ip / port /
    # world_size / offset, else RecBole's defaults 1 / localhost / 5678 / -1 (= nproc) / 0
    parser.add_argument("--nproc", type=int, default=None, help="the number of processes in this machine")
    parser.add_argument("--ip", type=str, default=None, help="the ip of master node")
    parser.add_argument("--port", type=str, default=None, help="the port of master node")
    parser.add_argument("--world_size", type=int, default=None, help="total number of jobs")
    parser.add_argument("--group_offset", "--offset", type=int, default=None, help="the global rank offset of this group")
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.split() if args.config_files else None
    try:
        named = file_settings(config_file_list, set(DEFAULTS))
        model, dataset = (getattr(args, key) or named.get(key) or DEFAULTS[key] for key in DEFAULTS)
        run(
            model,
            dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except UserInputError as error:  # the user's input, not a bug: no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
