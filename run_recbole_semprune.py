"""Run a recbole_semprune or RecBole model, with the flags of RecBole's run_recbole.py.

    python run_recbole_semprune.py --model=RASTP --dataset=amazon-beauty --data_path=../shared/datasets
    python run_recbole_semprune.py --model=SASRec --dataset=ml-100k --epochs=5
    python run_recbole_semprune.py --model=SASRec --dataset=ml-100k --epochs=5 --resume=True

Any other ``--key=value`` is a RecBole / plugin config key and overrides the yaml defaults.
"""

import argparse

from recbole_semprune.checkpoint import ResumeError
from recbole_semprune.distributed import DistributedSettingsError
from recbole_semprune.quick_start import run
from recbole_semprune.utils import DatasetError, UnknownModelError


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of dataset")
    parser.add_argument("--config_files", type=str, default=None, help="config files, space separated")
    # multi-process training (docs/distributed.md); unset: the config's nproc / ip / port /
    # world_size / offset, else RecBole's defaults 1 / localhost / 5678 / -1 (= nproc) / 0
    parser.add_argument("--nproc", type=int, default=None, help="the number of processes in this machine")
    parser.add_argument("--ip", type=str, default=None, help="the ip of master node")
    parser.add_argument("--port", type=str, default=None, help="the port of master node")
    parser.add_argument("--world_size", type=int, default=None, help="total number of jobs")
    parser.add_argument("--group_offset", "--offset", type=int, default=None, help="the global rank offset of this group")
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    try:
        run(
            args.model,
            args.dataset,
            config_file_list=config_file_list,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
        )
    except (UnknownModelError, DatasetError, DistributedSettingsError, ResumeError) as error:  # the user's input, not a bug: no traceback
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
