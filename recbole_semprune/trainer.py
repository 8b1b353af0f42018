"""RecBole's Trainer plus per-epoch training throughput and peak memory in the log."""

import threading
from time import perf_counter

import psutil
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_semprune.compat import recbole_checkpoint_loading
from recbole_semprune.distributed import DistributedTrainerMixin


class PeakMemory:
    """Peak memory over a window: CUDA max allocated on GPU, process RSS sampled on CPU.

    RSS is sampled by a background thread every ``interval`` seconds, because the kernel's
    high-water mark (``ru_maxrss``) cannot be reset between epochs or models.
    """

    def __init__(self, device, interval=0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._process = psutil.Process()
        self.peak_bytes = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return False

    @property
    def peak_mb(self):
        return self.peak_bytes / 2**20


def count_input_tokens(model, interaction):
    """Input tokens of a batch: the model's own count (SID models: items x levels), else items."""
    counter = getattr(model, "count_input_tokens", None)
    if counter is not None:
        return int(counter(interaction))
    length_field = getattr(model, "ITEM_SEQ_LEN", None)
    if length_field is not None and length_field in interaction:
        return int(interaction[length_field].sum())
    return len(interaction)


def count_token_slots(model, interaction):
    """Token slots a model computes for a batch, padding included (SID models: their trimmed
    history width x levels per row); else its input tokens, i.e. no padding counted."""
    counter = getattr(model, "count_token_slots", None)
    return int(counter(interaction)) if counter is not None else count_input_tokens(model, interaction)


class CheckpointLoadingMixin:
    """Lets any RecBole trainer read its own checkpoints on torch >= 2.6 (see ``compat``)."""

    def resume_checkpoint(self, *args, **kwargs):
        with recbole_checkpoint_loading():
            return super().resume_checkpoint(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with recbole_checkpoint_loading():
            return super().evaluate(*args, **kwargs)


def with_checkpoint_loading(trainer_class):
    """``trainer_class`` (one of RecBole's special trainers) able to reload its checkpoints,
    and, if it is a ``Trainer``, to run in RecBole's distributed mode on CPU too (see
    :mod:`recbole_semprune.distributed`)."""
    if issubclass(trainer_class, CheckpointLoadingMixin):
        return trainer_class
    mixins = (CheckpointLoadingMixin,)
    if issubclass(trainer_class, RecBoleTrainer):
        mixins = (DistributedTrainerMixin,) + mixins
    return type(trainer_class.__name__, mixins + (trainer_class,), {})


def model_epoch_stats(model):
    """The model's own figures of the epoch just trained (e.g. kept tokens of a pruning model):
    ``model.pop_epoch_stats()`` if the model has it, else ``{}``."""
    pop = getattr(model, "pop_epoch_stats", None)
    return dict(pop()) if pop is not None else {}


class Trainer(DistributedTrainerMixin, CheckpointLoadingMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` that also measures, per epoch, train steps, input tokens/s and peak
    memory (``self.epoch_stats``; the last epoch's figures are added to the epoch log line),
    reads its own checkpoints on torch >= 2.6 and runs in RecBole's distributed mode on CPU
    (gloo) and GPU (NCCL) with single-process metrics (:mod:`recbole_semprune.distributed`).

    A model may report figures of its own per epoch: ``pop_epoch_stats()`` returns them as a
    dict (and resets them), merged into the epoch's stats; ``describe_epoch_stats(stats)``
    returns the text appended to the epoch log line.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_stats = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        base_loss = loss_func or self.model.calculate_loss
        stats = {"epoch": epoch_idx, "steps": 0, "tokens": 0, "token_slots": 0}

        def counted_loss(interaction):
            stats["steps"] += 1
            stats["tokens"] += count_input_tokens(self.model, interaction)
            stats["token_slots"] += count_token_slots(self.model, interaction)
            return base_loss(interaction)

        start = perf_counter()
        with PeakMemory(self.device) as memory:
            losses = super()._train_epoch(train_data, epoch_idx, counted_loss, show_progress)
        stats["seconds"] = perf_counter() - start
        stats["tokens_per_second"] = stats["tokens"] / max(stats["seconds"], 1e-9)
        stats["peak_memory_mb"] = memory.peak_mb
        stats.update(model_epoch_stats(self.model))
        self.epoch_stats.append(stats)
        return losses

    def evaluate(self, *args, **kwargs):
        """RecBole's evaluation; with ``enable_amp`` under autocast too, as training is (RecBole
        evaluates in full precision), so a SID model's beam search decodes in mixed precision
        (its beam scores still add up in float32)."""
        with torch.autocast(device_type=self.device.type, enabled=bool(self.enable_amp)):
            return super().evaluate(*args, **kwargs)

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        output = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        if not self.epoch_stats or self.epoch_stats[-1]["epoch"] != epoch_idx:
            return output
        stats = self.epoch_stats[-1]
        describe = getattr(self.model, "describe_epoch_stats", None)
        model_part = describe(stats) if describe is not None else ""
        return output[:-1] + (
            ", "
            + set_color("tokens/s", "blue")
            + f": {stats['tokens_per_second']:.0f}, "
            + set_color("peak memory", "blue")
            + f": {stats['peak_memory_mb']:.0f} MB"
            + (", " + model_part if model_part else "")
            + "]"
        )
