"""Multi-process training on RecBole 1.2.1's own distributed mode, made to work on CPUs and exact.

RecBole runs one process per device (``run(..., nproc=N)``, keys ``nproc``, ``world_size``,
``ip``, ``port``, ``offset``) with a ``DistributedSampler`` per dataloader and a
``DistributedDataParallel`` model. Its 1.2.1 code assumes GPUs and averages metrics
approximately; this module holds what the plugin changes, each with its reason:

* backend: RecBole hard-codes NCCL, which has no CPU support. :func:`resolve_backend` picks
  gloo on CPU and NCCL on CUDA (config key ``dist_backend``: ``auto``, ``gloo`` or ``nccl``);
  the plugin's :class:`~recbole_semprune.config.Config` uses it.
* ``DistributedDataParallel(model, device_ids=[local_rank])``: ``device_ids`` must be None for
  a CPU model (torch raises otherwise); :func:`cpu_ddp` drops it there.
* evaluation: RecBole evaluates each rank's share of the users and then averages the rounded
  metrics weighted by ``len(batched_data)`` (always 4, so: by number of batches), while the
  ``DistributedSampler`` pads the user list with duplicates to split it evenly. The result is
  close to, not equal to, the single-process one, and wrong for metrics that are not means
  over users (ItemCoverage, GiniIndex ...). :class:`GatheringCollector` instead gathers every
  rank's per-user evaluation rows, drops the padding duplicates and puts them back in the
  single-process order, so every rank evaluates exactly what one process would have.
* checkpoints: RecBole saves on every machine's local rank 0 (under a name from each process's
  own clock) and every rank reads the file back. Here only global rank 0 writes and reads it
  and sends the weights to the others, so a multi-node run needs no shared file system.
* semantic IDs are built once, on global rank 0, and sent to the other ranks
  (:func:`share_from_rank0`, used by :func:`recbole_semprune.sid.build_semantic_ids`).
"""

import contextlib
import logging
import os

import numpy as np
import torch

from recbole_semprune import validate
from recbole_semprune.errors import SettingsError

BACKENDS = ("auto", "gloo", "nccl")

# per-row keys of RecBole's evaluation data struct (those Collector.get_data_struct resets)
ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


class DistributedSettingsError(SettingsError):
    """The multi-process keys (nproc, world_size, offset, port, ...) do not fit together."""


def world_size_of(nproc, world_size):
    """RecBole's rule: ``world_size`` -1 (or <= 0) means ``nproc`` (one machine)."""
    return nproc if world_size is None or int(world_size) <= 0 else int(world_size)


def check_settings(nproc, world_size, offset, port):
    """Validate the multi-process keys of one machine; returns the effective ``world_size``.

    Args:
        nproc (int): processes started on this machine.
        world_size (int): processes over all machines (-1: ``nproc``).
        offset (int): global rank of this machine's first process.
        port: the master's TCP port.
    """
    try:
        nproc = validate.integer("nproc", nproc, low=1, hint="(processes on this machine)")
        world_size = validate.integer("world_size", world_size, hint="(-1: nproc)")
        offset = validate.integer("offset", offset)
    except ValueError as error:
        raise DistributedSettingsError(str(error)) from None
    world = world_size_of(nproc, world_size)
    if world < nproc:
        raise DistributedSettingsError(
            f"world_size={world} is smaller than nproc={nproc}: world_size counts the processes "
            "of all machines together, nproc those started on this machine. Use "
            f"--world_size={nproc} (or leave it out) for one machine."
        )
    if offset < 0 or offset + nproc > world:
        raise DistributedSettingsError(
            f"offset={offset} with nproc={nproc} gives this machine ranks {offset}..."
            f"{offset + nproc - 1}, outside 0...{world - 1} (world_size={world}). offset "
            "(--group_offset) is the global rank of this machine's first process: 0 on the "
            "master, the number of processes on the machines before it elsewhere."
        )
    try:
        port_number = int(port)
    except (TypeError, ValueError):
        port_number = -1
    if not 0 < port_number < 65536:
        raise DistributedSettingsError(f"port={port!r} is not a TCP port number (1-65535).")
    return world


def resolve_backend(setting, use_cuda):
    """``dist_backend`` setting -> the torch.distributed backend: ``auto`` = NCCL on CUDA,
    gloo on CPU."""
    setting = "auto" if setting is None else str(setting).lower()
    if setting not in BACKENDS:
        raise DistributedSettingsError(
            f"dist_backend={setting!r} is not one of {', '.join(BACKENDS)}."
        )
    if setting == "auto":
        return "nccl" if use_cuda else "gloo"
    if setting == "nccl" and not use_cuda:
        raise DistributedSettingsError(
            "dist_backend=nccl needs CUDA devices, but this run is on CPU (no CUDA, "
            "use_gpu=False or an empty gpu_id): use dist_backend=gloo or auto."
        )
    return setting


def is_distributed():
    """True inside an initialised process group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def broadcast_object(obj, src=0):
    """``obj`` of rank ``src`` on every rank (a collective: every rank must call it). torch
    sends it through the current GPU under NCCL (RecBole sets it per rank)."""
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def share_from_rank0(build, what):
    """Run ``build()`` on global rank 0 only and return its result on every rank.

    A collective: every rank of the group must call it. If ``build`` fails on rank 0, rank 0
    raises its error and the other ranks raise a RuntimeError that quotes it (none waits
    forever). Outside a process group of several processes it simply calls ``build()``.
    """
    if not is_distributed():
        return build()
    if torch.distributed.get_rank() == 0:
        try:
            result = build()
        except BaseException as error:
            broadcast_object(("error", f"{type(error).__name__}: {error}"))
            raise
        broadcast_object(("ok", result))
        return result
    status, payload = broadcast_object(None)
    if status == "error":
        raise RuntimeError(f"Rank 0 failed to build {what}: {payload}")
    return payload


# ---- DistributedDataParallel on CPU -----------------------------------------------------------
def _cpu_aware_ddp(ddp_class):
    def make(module, device_ids=None, *args, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        return ddp_class(module, None if on_cpu else device_ids, *args, **kwargs)

    return make


@contextlib.contextmanager
def cpu_ddp():
    """While RecBole's trainer builds its ``DistributedDataParallel``, drop ``device_ids`` for
    a CPU model (torch refuses them there); restored on exit."""
    import recbole.trainer.trainer as recbole_trainer

    original = recbole_trainer.DistributedDataParallel
    recbole_trainer.DistributedDataParallel = _cpu_aware_ddp(original)
    try:
        yield
    finally:
        recbole_trainer.DistributedDataParallel = original


# ---- exact distributed evaluation -------------------------------------------------------------
def _collector_class():
    from recbole.evaluator import Collector

    class GatheringCollector(Collector):
        """RecBole's ``Collector`` that, when ``sample_order`` is set (the eval sampler's
        indices on this rank), gathers the per-row results of all ranks into the order a
        single process produces, without the ``DistributedSampler``'s padding duplicates."""

        sample_order = None  # (indices evaluated on this rank, number of samples in all)

        def get_data_struct(self):
            struct = super().get_data_struct()
            if self.sample_order is None:
                return struct
            (order, total), self.sample_order = self.sample_order, None
            keys = [key for key in ROW_KEYS if key in struct]
            rows = {key: struct[key] for key in keys}
            for key, value in rows.items():
                if len(value) != len(order):
                    raise RuntimeError(
                        f"Distributed evaluation expected one '{key}' row per evaluated sample "
                        f"({len(order)}), got {len(value)}."
                    )
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (order, rows))
            indices = np.concatenate([np.asarray(o, dtype=np.int64) for o, _ in gathered])
            _, first = np.unique(indices, return_index=True)  # sorted, first occurrences
            if len(first) != total or indices.max() + 1 != total:
                raise RuntimeError(
                    f"Distributed evaluation covered {len(first)} of {total} samples."
                )
            first = torch.from_numpy(first)
            for key in keys:
                struct.set(key, torch.cat([part[key] for _, part in gathered])[first])
            return struct

    return GatheringCollector


def make_gathering_collector(config):
    return _collector_class()(config)


class DistributedTrainerMixin:
    """Makes RecBole's ``Trainer`` run under RecBole's distributed mode on CPU (gloo) and GPU
    (NCCL) with the evaluation of a single process; a no-op in single-process runs.

    See the module docstring for what it changes and why.
    """

    def __init__(self, config, model):
        with cpu_ddp():
            super().__init__(config, model)
        if not config["single_spec"]:
            self.eval_collector = make_gathering_collector(config)
            # the one checkpoint, rank 0's, under one name (RecBole's has each process's time)
            self.saved_model_file = broadcast_object(self.saved_model_file)
        self._rows_gathered = False

    @property
    def global_rank(self):
        return 0 if self.config["single_spec"] else torch.distributed.get_rank()

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if self.global_rank != 0:  # one writer, also when several machines share a folder
            return
        return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)

    @torch.no_grad()
    def _load_best_model_everywhere(self, model_file):
        """Rank 0 reads the checkpoint and sends its weights to every rank."""
        from recbole_semprune.compat import load_checkpoint

        checkpoint_file = model_file or self.saved_model_file

        def read():
            checkpoint = load_checkpoint(checkpoint_file, map_location="cpu")
            return checkpoint["state_dict"], checkpoint.get("other_parameter")

        state_dict, other = share_from_rank0(read, f"the checkpoint {checkpoint_file}")
        self.model.load_state_dict(state_dict)
        self.model.load_other_parameter(other)
        source = "" if self.global_rank == 0 else " (read by rank 0)"
        self.logger.info(f"Loading model structure and parameters from {checkpoint_file}{source}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.config["single_spec"] or not eval_data:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        from recbole.data.dataloader import FullSortEvalDataLoader

        if load_best_model:
            self._load_best_model_everywhere(model_file)
        self._rows_gathered = isinstance(eval_data, FullSortEvalDataLoader)
        if self._rows_gathered:
            sampler = eval_data.sampler
            self.eval_collector.sample_order = (list(iter(sampler)), len(sampler.dataset))
        try:
            return super().evaluate(eval_data, False, model_file, show_progress)
        finally:
            self.eval_collector.sample_order = None
            self._rows_gathered = False

    def _map_reduce(self, result, num_sample):
        if self._rows_gathered:  # every rank evaluated all rows already
            return result
        return super()._map_reduce(result, num_sample)


def set_cpu_threads(nproc):
    """Share this machine's cores among its ``nproc`` CPU processes (unless OMP_NUM_THREADS is
    set): each rank otherwise starts one thread per core and they slow each other down."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // nproc)
    torch.set_num_threads(threads)
    logging.getLogger().debug(f"torch threads per process: {threads}")
