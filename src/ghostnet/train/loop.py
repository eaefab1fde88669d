"""The training loop, the same for every task: ``fit(config)``.

``fit`` reads top to bottom as its sections: ``open_run`` (every check and build that can
fail, nothing written) -> the run folder and its lock -> per epoch ``train_one_epoch``
(``train_step``: the task's forward under autocast, then the loop's backward, GradScaler,
clipping, optimizer, schedule, EMA) and ``end_epoch`` (the task's evaluation, metrics.csv,
last.pt / best.pt) -> ``finish`` (summary.json, curves; also after a failure). The task
object (``train.task.Task``) owns what differs: data, model, loss, evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ..checkpoint import checkpoint_task, read_checkpoint
from ..config import TrainConfig
from ..errors import GhostnetError
from . import report
from .distributed import (
    Collectives,
    Dist,
    ResumableSampler,
    init_distributed,
    pick_device,
    shutdown,
    wrap_for_training,
)
from .optim import autocast_for, build_optimizer, build_scheduler, ema_update
from .run_folder import (
    check_out_folder,
    keep_previous,
    read_resume_checkpoint,
    save_checkpoint_file,
    take_run_folder,
)
from .state import Meters, TrainState, resolve_resume, rng_state
from .task import ModelInfo, Task, TaskData
from .tasks import get_task

log = logging.getLogger("ghostnet")

Summary = dict[str, object]


class NonFiniteLoss(GhostnetError):
    """The loss became NaN/inf; nothing after the last finite checkpoint was saved."""


class Stopped(Exception):
    """A signal asked the run to stop; its state was saved."""


class StepBudget(Exception):
    """``max_steps`` optimizer steps were done; last.pt holds the state."""


@dataclass
class RunInfo:
    """What a run is (fixed once it starts): config, task, device, data, model counts."""

    config: TrainConfig
    task: Task
    out: Path
    ddp: Dist
    device: torch.device
    collectives: Collectives
    data: TaskData
    model: ModelInfo
    sampler: ResumableSampler
    loader: DataLoader
    steps_per_epoch: int
    max_steps: int | None = None
    wall_start: float = field(default_factory=time.perf_counter)
    saved: str = ""  # the last checkpoint written by this process ("epoch N ... at PATH")

    @property
    def interactive(self) -> bool:
        return self.ddp.main and not self.config.quiet and sys.stderr.isatty()


class StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at its next sync."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------- the run


def fit(
    config: TrainConfig,
    resume: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    task: Task | None = None,
    max_steps: int | None = None,
) -> Summary:
    """Train ``config`` (its ``--task``, or the given ``task`` object); returns the summary
    written to summary.json (empty on ranks other than 0).

    ``resume``: a ``last.pt`` to continue exactly (changed epochs/LR re-plan the schedule,
    other changes are refused). ``overwrite``: allow an --out that already holds a run.
    ``max_steps``: stop after that many optimizer steps in all (last.pt saved, status
    "stopped"; a stop on an epoch's last step scores that epoch first). A signal saves the
    state and raises ``KeyboardInterrupt``; a non-finite loss saves nothing after the last
    finite checkpoint and raises ``NonFiniteLoss``. Either way summary.json describes the
    run so far.
    """
    run, state = open_run(config, task, resume, overwrite, max_steps)  # nothing written yet
    created = not run.out.exists()
    try:
        lock = take_run_folder(run.out, run.collectives)
    except GhostnetError:
        run.task.close()
        shutdown(run.ddp)
        raise
    try:
        return _train(run, state, resume, created)
    finally:
        if lock is not None:
            lock.release()


def open_run(
    config: TrainConfig,
    task: Task | None,
    resume: str | os.PathLike | None,
    overwrite: bool,
    max_steps: int | None,
) -> tuple[RunInfo, TrainState]:
    """Every check and every build that can fail, before anything is written."""
    checkpoint, replan = None, False
    out = Path(config.out).expanduser()
    check_out_folder(out, resume=resume is not None, overwrite=overwrite)
    if resume is not None:
        checkpoint, used = read_resume_checkpoint(Path(resume))
        if checkpoint_task(checkpoint) != config.task:
            raise GhostnetError(
                f"{used} is a {checkpoint_task(checkpoint)} checkpoint; resume it with "
                f"--task {checkpoint_task(checkpoint)}"
            )
        config, replan = resolve_resume(config, checkpoint, used)
    task_class = type(task) if task is not None else get_task(config.task)
    if task_class.name != config.task:
        raise GhostnetError(f"fit: a {task_class.name} task object for --task {config.task}")
    task_class.check(config)  # every option this task does not honour: one line, now
    task = task if task is not None else task_class(config)
    task.config = config
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    ddp = init_distributed("cuda" if cuda else "cpu", config.dist_timeout)
    device = pick_device(config.device, ddp)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    autocast_for(device, config.amp)  # an impossible --amp fails here, not at step 1
    data = task.open_data(ddp.rank, ddp.world, checkpoint)
    model, info = task.build_model(data, checkpoint)
    sampler = ResumableSampler(data.train_set, ddp.world, ddp.rank, config.seed)
    # the loader gets its own generator so it never draws from the global RNG (exact resume)
    loader = DataLoader(
        data.train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        collate_fn=data.collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    run = RunInfo(
        config=config,
        task=task,
        out=out,
        ddp=ddp,
        device=device,
        collectives=Collectives(ddp, device, config.dist_timeout),
        data=data,
        model=info,
        sampler=sampler,
        loader=loader,
        steps_per_epoch=math.ceil(len(sampler) / config.batch_size),
        max_steps=max_steps,
    )
    state = build_state(run, model)
    task.prepare(state.model, device)
    torch.manual_seed(config.seed + ddp.rank)  # training randomness (dropout, mixup) per rank
    if checkpoint is not None:  # ... or exactly where the checkpoint was
        state.restore(checkpoint, config, run.steps_per_epoch, replan, ddp.rank, ddp.world)
    return run, state


def build_state(run: RunInfo, model: nn.Module) -> TrainState:
    """Optimizer, schedule, GradScaler (fp16) and EMA around ``model`` (moved to the device)."""
    config, device = run.config, run.device
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.sync_bn and run.ddp.enabled:
        if device.type != "cuda":
            raise GhostnetError("--sync-bn needs CUDA (torch has no CPU SyncBatchNorm)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    ema = (
        AveragedModel(model, multi_avg_fn=ema_update(config.ema), use_buffers=True)
        if config.ema > 0
        else None
    )
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, run.steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        ema=ema,
        meters=Meters(device, run.task.train_stats),
        best={run.task.best_metric: -math.inf, "epoch": -1},
    )


def _train(
    run: RunInfo, state: TrainState, resume: str | os.PathLike | None, created: bool
) -> Summary:
    """The epochs, and the summary however they end."""
    _announce(run, state, resume)
    train_model = wrap_for_training(state.model, run.ddp, run.device, run.config.compile)
    board = report.tensorboard(run.out) if run.ddp.main else None
    last_eval: dict[str, object] | None = None
    status = "finished"
    try:
        with StopRequested() as stop:
            while state.epoch < run.config.epochs:
                train_one_epoch(run, state, train_model, stop)
                last_eval = end_epoch(run, state, board)
                budget = run.max_steps is not None and state.global_step >= run.max_steps
                if budget and state.epoch < run.config.epochs:
                    raise StepBudget()
        if last_eval is None:  # resumed a run that had already finished
            last_eval = run_eval(run, state)
    except StepBudget:
        status = "stopped"
    except BaseException as exc:
        reasons = {Stopped: "stopped by a signal", NonFiniteLoss: "stopped: non-finite loss"}
        if created and run.ddp.main and not (run.out / "last.pt").exists():
            shutil.rmtree(run.out, ignore_errors=True)  # a failed start leaves nothing behind
        else:
            try:
                finish(run, state, last_eval, reasons.get(type(exc), f"failed: {exc}"))
            except GhostnetError as again:  # e.g. the same full disk: keep the first error
                log.warning("summary not written: %s", again)
        _teardown(run, board, clean=False)
        if isinstance(exc, Stopped):
            log.info("stopped by a signal: state saved to %s", run.out / "last.pt")
            raise KeyboardInterrupt from None
        raise
    summary = finish(run, state, last_eval, status)
    _teardown(run, board, clean=True)
    return summary


def _teardown(run: RunInfo, board: report.Board | None, clean: bool) -> None:
    run.task.close()
    if board is not None:
        board.close()
    if clean and run.ddp.enabled and dist.is_initialized():
        with suppress(Exception):
            dist.barrier()
    shutdown(run.ddp)


# --------------------------------------------------------------------- one epoch


def _fault_injection_step() -> int | None:
    """Tests only: ``GHOSTNET_KILL_AT_STEP=N`` SIGKILLs the process right after step N
    (with ``GHOSTNET_KILL_RANK=R``: only rank R), so a crash at a chosen, reproducible point
    can be tested."""
    value = os.environ.get("GHOSTNET_KILL_AT_STEP")
    return int(value) if value else None


def train_one_epoch(
    run: RunInfo, state: TrainState, train_model: nn.Module, stop: StopRequested
) -> None:
    """Train from ``state.step_in_epoch`` to the end of ``state.epoch``.

    Host syncs happen only at sync points (every ``log_every`` steps, periodic checkpoints,
    the epoch's last step, a stop request): there the running sums are read back, and all
    ranks agree on a non-finite loss (raise, nothing saved) and on a stop request (save,
    raise ``Stopped``)."""
    config, steps = run.config, run.steps_per_epoch
    run.sampler.set_epoch(state.epoch)
    run.data.train_set.set_epoch(state.epoch)
    run.sampler.skip = state.step_in_epoch * config.batch_size
    if state.step_in_epoch == 0:
        state.meters = Meters(run.device, run.task.train_stats)
    train_model.train()
    from tqdm import tqdm

    bar = tqdm(
        total=steps,
        initial=state.step_in_epoch,
        disable=not run.interactive,
        desc=f"epoch {state.epoch + 1}/{config.epochs}",
        leave=False,
    )
    kill_at = _fault_injection_step()
    kill_rank = int(os.environ.get("GHOSTNET_KILL_RANK", run.ddp.rank))
    tick = time.perf_counter()
    for step, batch in enumerate(run.loader, start=state.step_in_epoch):
        for path in getattr(batch, "skipped", ()):
            if path not in state.skipped_images:
                log.warning(
                    "skipping unreadable image (named once, see skipped_images.txt): %s", path
                )
                state.skipped_images.append(path)
        try:
            train_step(run, state, train_model, batch)
        except (RuntimeError, dist.DistBackendError) as exc:  # DDP's gradient all-reduce
            if run.ddp.enabled and _peer_failure(exc):
                raise run.collectives.lost(exc) from None
            raise
        state.global_step += 1
        state.step_in_epoch = step + 1
        now = time.perf_counter()
        state.meters.train_s += now - tick
        tick = now
        bar.update(1)
        if kill_at is not None and state.global_step == kill_at and kill_rank == run.ddp.rank:
            os.kill(os.getpid(), signal.SIGKILL)
        last = step + 1 >= steps
        periodic = config.checkpoint_every and state.global_step % config.checkpoint_every == 0
        logged = (step + 1) % config.log_every == 0
        local_stop = stop.signal is not None and not run.ddp.enabled
        budget = run.max_steps is not None and state.global_step >= run.max_steps and not last
        if not (last or periodic or logged or local_stop or budget):
            continue
        sums = state.meters.read()
        nonfinite, stopping = run.collectives.agree(sums["nonfinite"] > 0, stop.signal is not None)
        if nonfinite:
            bar.close()
            raise NonFiniteLoss(_nonfinite_message(run, state))
        _report_progress(run, state, bar, sums)
        if stopping or budget or (periodic and not last):  # (the epoch's end saves by itself)
            save_checkpoint(run, state, ("last.pt",))
        if stopping or budget:
            bar.close()
            raise Stopped() if stopping else StepBudget()
    bar.close()


def _peer_failure(exc: BaseException) -> bool:
    """Whether a training-step error is a collective that lost its peers (gloo/NCCL)."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistBackendError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer")
    )


def train_step(run: RunInfo, state: TrainState, train_model: nn.Module, batch: object) -> None:
    """One optimisation step: the task's forward + loss -> backward -> update."""
    config = run.config
    with autocast_for(run.device, config.amp):
        out = run.task.step(train_model, batch, run.device)
    if out is None:  # nothing readable in this batch
        return
    state.meters.update(out.loss, out.count, out.stats)
    if config.on_nonfinite == "skip":
        (finite,) = run.collectives.agree(torch.isfinite(out.loss))
        if not finite:  # agreed by every rank, before any backward (DDP's hooks)
            log.warning("non-finite loss at step %d: step skipped", state.global_step + 1)
            state.meters.sums[2] = 0  # counted as skipped, not as a reason to stop
            return
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    if config.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), config.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


def _nonfinite_message(run: RunInfo, state: TrainState) -> str:
    last = run.out / "last.pt"
    if last.exists():
        kept = read_checkpoint(last)
        where = (
            f"{last} is the last finite state (epoch {kept['epoch'] + 1}, step "
            f"{kept['step_in_epoch']}); continue it with --resume and a lower --lr (the "
            "schedule is re-planned) or --clip-grad"
        )
    else:
        where = "no checkpoint was written before it; start again with a lower --lr or --clip-grad"
    return (
        f"the loss became NaN/inf in epoch {state.epoch + 1} before step "
        f"{state.step_in_epoch}; nothing after it was saved: {where}"
    )


def _report_progress(run: RunInfo, state: TrainState, bar: object, sums: dict[str, float]) -> None:
    if not run.ddp.main or run.config.quiet:
        return
    rate = sums["seen"] / max(state.meters.train_s, 1e-9)
    columns = run.task.train_row(sums)
    if run.interactive:
        seen = max(sums["seen"], 1.0)
        shown = {k.removeprefix("train_"): f"{v:.3g}" for k, v in columns.items()}
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", **shown, img_s=f"{rate:.0f}")
    else:
        lr = state.optimizer.param_groups[0]["lr"]
        log.info(
            report.progress_line(
                state.epoch + 1,
                run.config.epochs,
                state.step_in_epoch,
                run.steps_per_epoch,
                sums,
                columns,
                rate,
                lr,
            )
        )


# --------------------------------------------------------------------- epoch end


def run_eval(run: RunInfo, state: TrainState) -> dict[str, object]:
    run.collectives.broadcast_buffers(state.eval_model)  # BN statistics of rank 0
    return run.task.evaluate(state.eval_model, run.device, run.collectives, run.interactive)


def end_epoch(run: RunInfo, state: TrainState, board: report.Board | None) -> dict[str, object]:
    """Metrics over all ranks, evaluation, metrics.csv, last.pt (and best.pt)."""
    names = state.meters.names
    sums = dict(zip(names, run.collectives.sum(state.meters.sums).tolist(), strict=True))
    result = run_eval(run, state)
    row = {
        "epoch": state.epoch + 1,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": sums["loss"] / max(sums["seen"], 1.0),
        **run.task.train_row(sums),
        **run.task.eval_row(result),
        "train_images_per_s": sums["seen"] / max(state.meters.train_s, 1e-9),
        "epoch_s": state.meters.train_s,
    }
    state.history.append(row)
    metric = run.task.best_metric
    improved = float(result[metric]) > state.best[metric]
    if improved:
        state.best = {metric: float(result[metric]), "epoch": state.epoch + 1}
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    if run.ddp.main:
        log.info(report.epoch_line(row, run.config.epochs))
        report.write_metrics(run.out, state.history, _survivor(run))
        skipped = sorted(set(state.skipped_images) | set(run.data.skipped))
        if skipped:
            from ..safe_io import write_text

            write_text(run.out / "skipped_images.txt", "\n".join(skipped) + "\n")
        report.log_scalars(board, row)
    save_checkpoint(run, state, ("last.pt", "best.pt") if improved else ("last.pt",))
    return result


def save_checkpoint(run: RunInfo, state: TrainState, names: tuple[str, ...]) -> None:
    """Gather every rank's RNG state, then rank 0 writes ``names`` atomically (each with its
    checksum). Every rank must call this at the same point (the gather is a collective)."""
    states = run.collectives.gather_objects(rng_state())
    if run.ddp.main:
        extra = {
            "rng": states,
            "world_size": run.ddp.world,
            "elapsed_s": state.elapsed_before + time.perf_counter() - run.wall_start,
            "params": run.model.params,
            "macs": run.model.macs,
        }
        payload = state.checkpoint(run.task.name, run.config, run.task.checkpoint_meta(), extra)
        keep_previous(run.out / "last.pt")
        for name in names:
            save_checkpoint_file(payload, run.out / name, _survivor(run))
        run.saved = f"epoch {state.epoch} (step {state.step_in_epoch}) at {run.out / 'last.pt'}"


def _survivor(run: RunInfo) -> str:
    """What a failed checkpoint write leaves intact, for its error line."""
    if run.saved:
        return f"last good checkpoint: {run.saved}"
    if (run.out / "last.pt").exists():
        return f"last good checkpoint: {run.out / 'last.pt'} (from before this run)"
    return "no checkpoint of this run was written yet"


def finish(
    run: RunInfo, state: TrainState, last_eval: dict[str, object] | None, status: str
) -> Summary:
    """summary.json and curves.png (also after an interrupt or a non-finite loss)."""
    if not run.ddp.main:
        return {}
    found = state.best["epoch"] > 0
    summary: Summary = {
        "status": status,
        "task": run.task.name,
        "model": run.model.label,
        "params": run.model.params,
        "macs": run.model.macs,
        "epochs": run.config.epochs,
        "epochs_done": state.epoch,
        "global_step": state.global_step,
        "best_metric": run.task.best_metric,
        "best_epoch": state.best["epoch"] if found else None,
        "train_images": len(run.data.train_set),
        "train_images_per_s": report.median_rate(state.history),
        **run.task.summary(last_eval or {}, state.best),
        **report.runtime_fields(
            run.device, run.ddp.world, state.elapsed_before + time.perf_counter() - run.wall_start
        ),
        "recipe": run.config.recipe,
        "config": run.config.to_dict(),
        "classes": run.data.classes,
        "skipped": sorted(set(state.skipped_images) | set(run.data.skipped)),
    }
    report.write_summary(run.out, summary, state.history)
    return summary


def _announce(run: RunInfo, state: TrainState, resume: str | os.PathLike | None) -> None:
    if not run.ddp.main:
        return
    c = run.config
    macs = f", {run.model.macs:,} MACs" if run.model.macs else ""
    log.info(
        "training %s: %s (%s params%s) on %d images (%d classes), eval on %d; %s, "
        "%d process(es), %d epochs x %d steps",
        run.task.name,
        run.model.label,
        f"{run.model.params:,}",
        macs,
        len(run.data.train_set),
        len(run.data.classes),
        len(run.data.eval_set),
        run.device,
        run.ddp.world,
        c.epochs,
        run.steps_per_epoch,
    )
    for line in run.task.describe():
        log.info(line)
    if resume is not None:
        log.info("resuming %s at epoch %d, step %d", resume, state.epoch + 1, state.step_in_epoch)
