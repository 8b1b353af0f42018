"""RecBole's Trainer plus per-epoch training throughput and peak memory in the log, training
that resumes after an interruption (:mod:`recbole_semprune.checkpoint`), a step budget and a
learning-rate schedule, and the history mask ``exclude_seen`` of every model's evaluation."""

import itertools
import math
import os
import threading
from time import perf_counter, process_time

import psutil
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_semprune import checkpoint, validate
from recbole_semprune.compat import recbole_checkpoint_loading
from recbole_semprune.distributed import DistributedTrainerMixin
from recbole_semprune.model.sid_recommender import SIDRecommender


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
    """Input tokens of a batch: a SID model's own count (items x levels), else items."""
    if isinstance(model, SIDRecommender):
        return int(interaction[model.ITEM_SEQ_LEN].sum()) * model.n_levels
    length_field = getattr(model, "ITEM_SEQ_LEN", None)
    if length_field is not None and length_field in interaction:
        return int(interaction[length_field].sum())
    return len(interaction)


def count_token_slots(model, interaction):
    """Token slots a model computes for a batch, padding included (SID models: their trimmed
    history width x levels per row); else its input tokens, i.e. no padding counted."""
    if isinstance(model, SIDRecommender):
        return model.history(interaction)[0].numel() * model.n_levels
    return count_input_tokens(model, interaction)


class CheckpointLoadingMixin:
    """Lets any RecBole trainer read its own checkpoints on torch >= 2.6 (see ``compat``)."""

    last_checkpoint_file = None  # the resume state, which only the plugin Trainer writes

    def remove_last_checkpoint(self):
        """Deletes the resume state, if there is one (the run has its result)."""
        if self.last_checkpoint_file and os.path.exists(self.last_checkpoint_file):
            os.remove(self.last_checkpoint_file)

    def resume_checkpoint(self, *args, **kwargs):
        with recbole_checkpoint_loading():
            return super().resume_checkpoint(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with recbole_checkpoint_loading():
            return super().evaluate(*args, **kwargs)


def exclude_seen(config):
    """The protocol key ``exclude_seen`` (``properties/overall.yaml``): whether evaluation
    ranks the items of each row's input history last."""
    value = config["exclude_seen"]
    if value is None:  # a config pickled before the key existed (a RecBole model's checkpoint)
        return False
    return validate.boolean("exclude_seen", value)


def mask_history(scores, interaction, model, rows=None):
    """Sets, in place, the score of every item of each interaction's input history
    (``interaction[model.ITEM_SEQ]``) to -inf in its row of ``scores`` ``[rows, n_items]``:
    row ``i`` of the interaction, or ``rows[i]`` when given. A no-op for models without an
    input sequence (RecBole already ranks a general model's training items last)."""
    field = getattr(model, "ITEM_SEQ", None)
    if field is None or field not in interaction:
        return scores
    history = interaction[field].to(scores.device)  # padding is item 0, always -inf
    rows = torch.arange(len(history)) if rows is None else rows
    scores[rows.to(scores.device).unsqueeze(1), history] = float("-inf")
    return scores


class HistoryMaskMixin:
    """With ``exclude_seen: True``, evaluation never ranks an item of a row's input history:
    its score is set to -inf after the model's, for every model alike (full ranking and
    sampled ranking). SID models also leave those items out of their beam search, so the mask
    changes nothing there but makes the protocol the same on both sides of a comparison."""

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if exclude_seen(self.config):
            mask_history(scores, interaction, self.model)
        return interaction, scores, positive_u, positive_i

    def _neg_sample_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._neg_sample_batch_eval(batched_data)
        if exclude_seen(self.config) and scores.dim() == 2:  # ranking (not value) evaluation
            mask_history(scores, interaction, self.model, rows=batched_data[1])
        return interaction, scores, positive_u, positive_i


def model_epoch_stats(model):
    """A SID model's own figures of the epoch just trained (e.g. kept tokens of a pruning
    model, :meth:`SIDRecommender.pop_epoch_stats`), else ``{}``."""
    return dict(model.pop_epoch_stats()) if isinstance(model, SIDRecommender) else {}


class _FirstBatches:
    """The first ``steps`` batches of a train loader (every other attribute is the loader's):
    the last epoch of a ``max_steps`` budget."""

    def __init__(self, loader, steps):
        self.loader, self.steps = loader, steps

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.steps)

    def __len__(self):
        return self.steps

    def __getattr__(self, name):
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


class LRSchedule:
    """The learning-rate schedule (config keys ``lr_schedule``, ``lr_warmup_steps``): the factor
    on the configured ``learning_rate`` at optimisation step ``step`` (1, 2, ... counted over the
    whole run, so a resumed run goes on where it stopped) of a run of ``total`` steps.

    - warm-up: steps ``1 .. lr_warmup_steps`` rise linearly, ``step / lr_warmup_steps``;
    - then ``constant``: 1; ``cosine``: half a cosine from 1 down to 0 at the end of the run's
      budget (``total``: ``max_steps``, or ``epochs`` x batches per epoch); ``inverse_sqrt``:
      ``sqrt(lr_warmup_steps / step)`` (T5's and the TIGER paper's schedule).

    ``constant`` without warm-up (the default) leaves the optimiser's rate untouched: RecBole's
    behaviour.
    """

    KINDS = ("constant", "cosine", "inverse_sqrt")

    def __init__(self, config):
        self.kind = validate.choice("lr_schedule", config["lr_schedule"], self.KINDS)
        self.warmup_steps = validate.integer(
            "lr_warmup_steps", config["lr_warmup_steps"], low=0,
            hint="(0: no warm-up)" if self.kind != "inverse_sqrt" else
            "(inverse_sqrt decays from the end of the warm-up: set lr_warmup_steps >= 1)")
        if self.kind == "inverse_sqrt" and self.warmup_steps == 0:
            raise ValueError("lr_schedule=inverse_sqrt needs lr_warmup_steps >= 1 (the decay "
                             "sqrt(lr_warmup_steps / step) starts where the warm-up ends)")

    @property
    def active(self):
        return self.kind != "constant" or self.warmup_steps > 0

    def factor(self, step, total):
        if step <= self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "inverse_sqrt":
            return math.sqrt(self.warmup_steps / step)
        if self.kind == "cosine":
            done = min((step - self.warmup_steps - 1) / max(total - self.warmup_steps, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return 1.0


class FiguresMixin:
    """Per-epoch figures, the step budget and the learning-rate schedule, for RecBole's
    ``Trainer`` and its subclasses.

    ``self.epoch_stats``: per epoch its train steps, input tokens and token slots, seconds (wall
    and CPU), tokens/s and peak memory, and the model's own figures (``pop_epoch_stats()``);
    ``self.valid_stats``: per validation its time and result. ``max_steps`` (config key): training
    stops after that many optimisation steps in all (the last epoch is cut short), or after
    ``epochs``, whichever comes first. ``lr_schedule`` / ``lr_warmup_steps`` (config keys,
    :class:`LRSchedule`): the learning rate of every step. ``progress_seconds`` (attribute,
    None = off): print a progress line to stdout about that often while training.
    """

    progress_seconds = None

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_stats, self.valid_stats = [], []
        self.max_steps = check_max_steps(config["max_steps"])
        self.lr_schedule = LRSchedule(config)
        self._progress = None
        self._total_steps = None

    def steps_done(self):
        return sum(stats["steps"] for stats in self.epoch_stats)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        if self.max_steps is not None:  # the epochs the budget still allows, the last one cut
            left = max(self.max_steps - self.steps_done(), 0)
            self.epochs = min(self.epochs, self.start_epoch + math.ceil(left / len(train_data)))
        self._total_steps = min(self.max_steps or math.inf, self.config["epochs"] * len(train_data))
        self._progress = {"start": perf_counter(), "done": self.steps_done(), "last": perf_counter()}
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        base_loss = loss_func or self.model.calculate_loss
        stats = {"epoch": epoch_idx, "steps": 0, "tokens": 0, "token_slots": 0}
        if self.max_steps is not None and self.max_steps - self.steps_done() < len(train_data):
            train_data = _FirstBatches(train_data, self.max_steps - self.steps_done())
        in_epoch = len(train_data)

        def counted_loss(interaction):
            stats["steps"] += 1
            stats["tokens"] += count_input_tokens(self.model, interaction)
            stats["token_slots"] += count_token_slots(self.model, interaction)
            self._schedule_learning_rate(self.steps_done() + stats["steps"])
            self._print_progress(epoch_idx, stats["steps"], in_epoch)
            return base_loss(interaction)

        start, start_cpu = perf_counter(), process_time()
        with PeakMemory(self.device) as memory:
            losses = super()._train_epoch(train_data, epoch_idx, counted_loss, show_progress)
        stats["seconds"] = perf_counter() - start
        stats["cpu_seconds"] = process_time() - start_cpu
        stats["tokens_per_second"] = stats["tokens"] / max(stats["seconds"], 1e-9)
        stats["peak_memory_mb"] = memory.peak_mb
        stats.update(model_epoch_stats(self.model))
        self.epoch_stats.append(stats)
        self._print_progress(epoch_idx, stats["steps"], in_epoch, end=True)
        return losses

    def _schedule_learning_rate(self, step):
        """Set every parameter group's rate for optimisation step ``step`` (1-based, whole run)."""
        if not self.lr_schedule.active:
            return
        rate = self.learning_rate * self.lr_schedule.factor(step, self._total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def _print_progress(self, epoch_idx, step, in_epoch, end=False):
        """``progress: epoch E/N, step K/M, S s/step ..., ETA of training T s`` (the step is
        counted when its batch arrives; ``end``: the epoch's last step is done)."""
        now, progress = perf_counter(), self._progress
        if self.progress_seconds is None or progress is None:
            return
        if not end and (now - progress["last"] < self.progress_seconds or step == in_epoch):
            return
        progress["last"] = now
        done = self.steps_done() if end else self.steps_done() + step - 1
        per_step = (now - progress["start"]) / max(done - progress["done"], 1)
        total = self.max_steps or self.epochs * in_epoch
        print(f"progress: epoch {epoch_idx + 1}/{self.epochs}, step {step}/{in_epoch}, "
              f"{per_step:.2f} s/step (wall, evaluation included), "
              f"ETA of training {per_step * max(total - done, 0):.0f} s", flush=True)

    def _valid_epoch(self, valid_data, show_progress=False):
        start, start_cpu = perf_counter(), process_time()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_stats.append({
            "epoch": self.epoch_stats[-1]["epoch"] if self.epoch_stats else None,
            # training seconds of the epochs so far: the x of a validation curve
            "train_seconds": sum(s["seconds"] for s in self.epoch_stats),
            "seconds": perf_counter() - start,
            "cpu_seconds": process_time() - start_cpu,
            "result": dict(result),
        })
        return score, result

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        output = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        if not self.epoch_stats or self.epoch_stats[-1]["epoch"] != epoch_idx:
            return output
        stats = self.epoch_stats[-1]
        model_part = ""
        if isinstance(self.model, SIDRecommender):
            model_part = self.model.describe_epoch_stats(stats)
        return output[:-1] + (
            ", " + set_color("tokens/s", "blue") + f": {stats['tokens_per_second']:.0f}, "
            + set_color("peak memory", "blue") + f": {stats['peak_memory_mb']:.0f} MB"
            + (", " + model_part if model_part else "") + "]"
        )


def check_max_steps(value):
    """The config key ``max_steps``: None (no step budget) or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_steps must be a positive int or None, got {value!r}")
    return value


def with_checkpoint_loading(trainer_class):
    """``trainer_class`` (one of RecBole's special trainers) able to reload its checkpoints,
    and, if it is a ``Trainer``, recording the per-epoch figures and honouring ``max_steps``
    (:class:`FiguresMixin`), running in RecBole's distributed mode on CPU too (see
    :mod:`recbole_semprune.distributed`) and applying the history mask ``exclude_seen``."""
    if issubclass(trainer_class, CheckpointLoadingMixin):
        return trainer_class
    mixins = (CheckpointLoadingMixin,)
    if issubclass(trainer_class, RecBoleTrainer):
        mixins = (DistributedTrainerMixin, HistoryMaskMixin) + mixins + (FiguresMixin,)
    return type(trainer_class.__name__, mixins + (trainer_class,), {})


class Trainer(DistributedTrainerMixin, HistoryMaskMixin, CheckpointLoadingMixin, FiguresMixin,
              RecBoleTrainer):
    """RecBole's ``Trainer`` that also measures, per epoch, train steps, input tokens/s and peak
    memory (``self.epoch_stats``; the last epoch's figures are added to the epoch log line),
    and per validation its time and result (``self.valid_stats``), reads its own checkpoints
    on torch >= 2.6, runs in RecBole's distributed mode on CPU (gloo) and GPU (NCCL) with
    single-process metrics (:mod:`recbole_semprune.distributed`), applies the history mask
    ``exclude_seen`` (:class:`HistoryMaskMixin`), and resumes after an interruption.

    A SID model reports figures of its own per epoch: ``pop_epoch_stats()`` returns them as a
    dict (and resets them), merged into the epoch's stats; ``describe_epoch_stats(stats)``
    returns the text appended to the epoch log line.

    Resume (:mod:`recbole_semprune.checkpoint`): ``fit(saved=True)`` writes the resume state
    ``<Model>-<time>-last.pth`` beside the best checkpoint after every completed epoch (a
    caller training with ``saved=False`` may set ``last_checkpoint_file`` itself), and
    :meth:`resume_from` continues from one. A single-process feature: multi-process runs
    write none. Every file is written atomically (:func:`checkpoint.atomic_save`), the best
    checkpoint too.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.last_checkpoint_file = None
        self.finished = False  # training is over (early stop or last epoch): only testing is left
        self._best_checkpoint = None  # CPU copy of the best checkpoint, for the resume state
        self._rng_to_restore = None
        self._loaders = {}
        self._saved = False

    # ---- resume -------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        if not self.config["single_spec"]:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if saved and self.last_checkpoint_file is None:
            self.last_checkpoint_file = checkpoint.last_checkpoint_path(self.saved_model_file)
        self._saved = saved
        self._loaders = {"train": train_data, "valid": valid_data}
        if self._rng_to_restore is not None:
            checkpoint.set_rng_state(self._rng_to_restore, self._loaders)
            self._rng_to_restore = None
            if self.finished or self.start_epoch >= self.epochs:
                self.finished = True
                self.logger.info("Training was over when the run stopped: nothing left to train.")
                return self.best_valid_score, self.best_valid_result
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.finished = True
        last = self.epoch_stats[-1]["epoch"] if self.epoch_stats else self.start_epoch - 1
        self._write_last_checkpoint(last)
        return result

    def _write_last_checkpoint(self, epoch):
        """The resume state after ``epoch``: everything :meth:`resume_from` puts back."""
        if self.last_checkpoint_file is None or self.global_rank != 0:
            return
        scheduler = getattr(self, "scheduler", None)
        state = {
            "format": checkpoint.FORMAT,
            "config": self.config,
            "epoch": epoch,
            "finished": self.finished,
            "saved": self._saved,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "best_valid_result": self.best_valid_result,
            "train_loss_dict": self.train_loss_dict,
            "epoch_stats": self.epoch_stats,
            "valid_stats": self.valid_stats,
            "best_checkpoint": self._best_checkpoint,
            "saved_model_name": os.path.basename(self.saved_model_file),
            "rng": checkpoint.rng_state(self._loaders),
        }
        checkpoint.atomic_save(state, self.last_checkpoint_file)

    def resume_from(self, path, state):
        """Continue the run whose resume state ``state`` was read from ``path`` (see
        :func:`recbole_semprune.quick_start.resume_state`): the model (built with the state's semantic IDs),
        optimiser, scheduler, early stopping, figures and best checkpoint now are the
        interrupted run's after its last completed epoch; the random states follow when
        :meth:`fit` gets the data loaders."""
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        self.train_loss_dict = dict(state["train_loss_dict"])
        self.epoch_stats = list(state["epoch_stats"])
        self.valid_stats = list(state["valid_stats"])
        self.finished = state["finished"]
        self._rng_to_restore = state["rng"]
        self.last_checkpoint_file = path
        if state["saved"]:  # the run keeps its best checkpoint, as it was after that epoch
            folder = os.path.dirname(os.path.abspath(path))
            self.saved_model_file = os.path.join(folder, state["saved_model_name"])
            self._best_checkpoint = state["best_checkpoint"]
            if self._best_checkpoint is not None:
                checkpoint.atomic_save(self._best_checkpoint, self.saved_model_file)
            elif os.path.exists(self.saved_model_file):  # written after the resume state
                os.remove(self.saved_model_file)
        self.logger.info(
            f"Resuming {path}: epoch {state['epoch']} was the last completed, "
            + ("training was over" if self.finished else f"training goes on at epoch {self.start_epoch}")
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's best-model checkpoint, written atomically; a CPU copy of it goes into the
        resume state, so that a resumed run tests the best epoch's weights."""
        if self.global_rank != 0:  # one writer, also when several machines share a folder
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        checkpoint.atomic_save(state, saved_model_file)
        if self.last_checkpoint_file is not None and saved_model_file == self.saved_model_file:
            self._best_checkpoint = checkpoint.to_cpu(state)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    # ---- figures (FiguresMixin) ---------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # Epoch ``epoch_idx - 1`` is complete (validated, early stopping updated) when the next
        # one starts: its resume state is written now, outside the timed window; the last
        # epoch's when fit() ends.
        if epoch_idx > self.start_epoch:
            self._write_last_checkpoint(epoch_idx - 1)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def evaluate(self, *args, **kwargs):
        """RecBole's evaluation; with ``enable_amp`` under autocast too, as training is (RecBole
        evaluates in full precision), so a SID model's beam search decodes in mixed precision
        (its beam scores still add up in float32)."""
        with torch.autocast(device_type=self.device.type, enabled=bool(self.enable_amp)):
            return super().evaluate(*args, **kwargs)
