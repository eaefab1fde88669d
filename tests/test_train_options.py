"""Every TrainConfig option x every task: honoured (a probe below shows its effect, or the
named test does) or refused in one line before any work.

A probe builds the run as ``fit`` would (``open_run``: data, model, optimizer; nothing
written) with the option at its default and at a changed value, and shows that what the
option governs differs (the optimizer, the LR plan, the first batch, the weights after one
step, the model...). Options whose effect needs a whole run point to the test showing it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ghostnet.checkpoint import FORMAT
from ghostnet.config import TrainConfig, default_of
from ghostnet.errors import GhostnetError
from ghostnet.models import ModelSpec, create_model
from ghostnet.train import get_task
from ghostnet.train.distributed import Dist
from ghostnet.train.loop import RunInfo, build_state, open_run, train_step
from ghostnet.train.optim import build_optimizer, build_scheduler
from ghostnet.train.state import TrainState

from .imagegen import make_image_folder, write_coco, write_voc

TASKS = ("classification", "detection", "segmentation")
TESTS = Path(__file__).parent

Probe = Callable[[RunInfo, TrainState], object]


def _hyper(optimizer: torch.optim.Optimizer) -> object:
    skip = ("params", "initial_lr")  # initial_lr: set by the scheduler the run builds
    groups = [{k: v for k, v in g.items() if k not in skip} for g in optimizer.param_groups]
    return type(optimizer).__name__, groups


def _optimizer(config: TrainConfig) -> object:
    """The loop builds the optimizer from the config alone, the same for every task
    (``test_loop_builds_optimizer_and_schedule_from_the_config`` checks it does)."""
    return _hyper(build_optimizer(torch.nn.Conv2d(1, 1, 1), config))


def _lr_plan(config: TrainConfig, steps_per_epoch: int = 3) -> object:
    optimizer = build_optimizer(torch.nn.Linear(1, 1), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(config.epochs * steps_per_epoch):
            optimizer.step()
            scheduler.step()
            lrs.append(round(optimizer.param_groups[0]["lr"], 12))
    return lrs


def _first_batch(run: RunInfo, state: TrainState) -> object:
    run.sampler.set_epoch(0)
    run.data.train_set.set_epoch(0)
    batch = next(iter(run.loader))
    images = batch[0] if isinstance(batch, tuple) else batch.images
    return [img.flatten()[:4096] for img in images] if isinstance(images, list) else images


def _after_one_step(run: RunInfo, state: TrainState) -> object:
    run.sampler.set_epoch(0)
    run.data.train_set.set_epoch(0)
    state.model.train()
    train_step(run, state, state.model, next(iter(run.loader)))
    model = state.eval_model if state.ema is not None else state.model
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def _model(run: RunInfo, state: TrainState) -> object:
    return {
        k: (tuple(v.shape), float(v.float().sum())) for k, v in state.model.state_dict().items()
    }


def _memory_format(run: RunInfo, state: TrainState) -> object:
    conv = next(m for m in state.model.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.weight.is_contiguous(memory_format=torch.channels_last)


def _sizes(run: RunInfo, state: TrainState) -> object:
    return len(run.data.train_set), run.steps_per_epoch, _eval_count(run)


def _input_size(run: RunInfo, state: TrainState) -> object:
    if run.task.name == "detection":  # the detector's own resize
        return run.task.spec.image_size
    return _first_batch(run, state).shape


def _eval_count(run: RunInfo) -> int:
    task = run.task
    return (
        len(task.eval_indices) if hasattr(task, "eval_indices") else len(task.eval_loader.sampler)
    )


def _output_stride(run: RunInfo, state: TrainState) -> object:
    return state.model.backbone.feature_info.reduction()


def _ema(run: RunInfo, state: TrainState) -> object:
    return state.ema is not None and _after_one_step(run, state).sum().item()


def _sync_bn_on_cpu(run: RunInfo, state: TrainState) -> object:
    """On CPU (2 simulated processes) --sync-bn is refused by build_state: it needs CUDA."""
    two = dataclasses.replace(run, ddp=Dist(0, 2, 0))
    try:
        build_state(two, state.model)
    except GhostnetError as exc:
        return str(exc)
    return "built"


# field -> (changed value, extra base values that make the field matter, probe). A test
# name instead of a probe: that test shows the effect over a whole run.
HONOURED: dict[str, tuple[object, dict[str, object], Probe | str]] = {
    "epochs": (3, {}, _lr_plan),
    "batch_size": (1, {}, _sizes),
    "lr": (0.5, {}, _optimizer),
    "opt": ("adamw", {}, _optimizer),
    "momentum": (0.5, {}, _optimizer),
    "nesterov": (True, {}, _optimizer),
    "rmsprop_eps": (0.5, {"opt": "rmsprop"}, _optimizer),
    "weight_decay": (0.1, {}, _optimizer),
    "sched": ("step", {"milestones": [1]}, _lr_plan),
    "warmup_epochs": (1.0, {}, _lr_plan),
    "milestones": ([1], {"sched": "step"}, _lr_plan),
    "decay_epochs": (0.5, {"sched": "step"}, _lr_plan),
    "gamma": (0.5, {"sched": "step", "milestones": [1]}, _lr_plan),
    "min_lr": (0.01, {}, _lr_plan),
    "clip_grad": (1e-4, {"lr": 1.0}, _after_one_step),
    "ema": (0.5, {}, _ema),
    "amp": ("bf16", {}, _after_one_step),
    "seed": (7, {}, _after_one_step),
    "model_kwargs": ({"width": 0.5}, {"model": "mobilenetv2_cifar"}, _model),
    "ghostify": ({"ratio": 2}, {}, _model),
    "init_weights": ("INIT", {}, _model),
    "train_subset": (2, {}, _sizes),
    "eval_subset": (1, {}, _sizes),
    "device": (
        "cpu",
        {"device": "auto"},
        "test_engine.py::test_collectives_use_the_training_device",
    ),
    "workers": (1, {}, lambda run, state: run.loader.num_workers),
    "dist_timeout": (20.0, {}, lambda run, state: run.collectives.timeout_s),
    "sync_bn": (True, {}, _sync_bn_on_cpu),
    "on_nonfinite": ("skip", {}, "test_engine.py::test_nonfinite_loss_skip_mode"),
    "checkpoint_every": (1, {}, "test_train_loop.py::test_sigkill_then_resume_is_bit_identical"),
    "log_every": (1, {}, "test_engine.py::test_progress_lines_and_augmentation"),
    "quiet": (False, {}, "test_engine.py::test_progress_lines_and_augmentation"),
    "recipe": ("cifar-fast", {}, "test_engine.py::test_recipes_and_overrides"),
    "model": ("resnet32_cifar", {}, _model),
    "data": ("OTHER", {}, _sizes),
    "out": ("elsewhere", {}, lambda run, state: run.out.name),
    "task": (None, {}, "test_train_options.py::test_task_picks_its_task_object"),
    # classification
    "label_smoothing": (0.3, {}, _after_one_step),
    "augment": ("none", {}, _first_batch),
    "randaugment": (9, {}, _first_batch),
    "random_erase": (1.0, {}, _first_batch),
    "mixup": (0.4, {}, _after_one_step),
    "cutmix": (1.0, {}, _after_one_step),
    "teacher": ("TEACHER", {}, _after_one_step),
    "kd_alpha": (0.9, {"teacher": "TEACHER"}, _after_one_step),
    "kd_temperature": (1.0, {"teacher": "TEACHER"}, _after_one_step),
    "kd_features": ("layer1", {"teacher": "TEACHER"}, _after_one_step),
    "kd_feature_weight": (50.0, {"teacher": "TEACHER", "kd_features": "layer1"}, _after_one_step),
    "channels_last": (True, {}, _memory_format),
    "compile": (True, {}, "test_engine.py::test_compile_trains_saves_plain_keys_and_resumes"),
    "preset": ("imagenet", {}, _first_batch),
    "input_size": (24, {}, _input_size),
    "strict_data": (True, {}, lambda run, state: run.data.train_set.strict),
    # detection
    "detector": ("retinanet", {"head_convs": 4}, _model),
    "fpn_channels": (64, {}, _model),
    "head_convs": (2, {}, _model),
    # segmentation
    "segmenter": ("deeplabv3", {}, _model),
    "output_stride": (16, {"model": "vgg16_cifar"}, _output_stride),
    "aux_loss": (0.5, {}, _model),
}

CHANGED_FOR_REFUSAL = {
    "augment": "none",
    "detector": "fcos",
    "preset": "cifar",
    "input_size": 24,
    "kd_features": "layer1",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("options")
    images = make_image_folder(root / "images", classes=3, per_class=4, size=16)
    other = make_image_folder(root / "other", classes=2, per_class=3, size=16)
    coco = write_coco(root / "coco", images=4)
    teacher = create_model("resnet20_cifar", num_classes=3)
    spec = ModelSpec("resnet20_cifar", {"num_classes": 3})
    torch.save(
        {
            "format": FORMAT,
            "model_spec": spec.to_dict(),
            "classes": ["class_0", "class_1", "class_2"],
            "model": teacher.state_dict(),
        },
        root / "teacher.pt",
    )
    torch.manual_seed(123)
    torch.save(create_model("resnet20_cifar", num_classes=3).state_dict(), root / "init.pt")
    other_coco = write_coco(root / "coco_other", images=6, seed=1)
    voc = write_voc(root / "voc", count=4, size=(32, 32))
    other_voc = write_voc(root / "voc_other", count=6, size=(32, 32), seed=1)
    return {
        "images": images,
        "other": other,
        "coco": coco,
        "other_coco": other_coco,
        "voc": voc,
        "other_voc": other_voc,
        "teacher": root / "teacher.pt",
        "init": root / "init.pt",
        "root": root,
    }


def _base(task: str, files: dict[str, Path]) -> dict[str, object]:
    common = dict(model="resnet20_cifar", epochs=2, batch_size=2, lr=0.05, quiet=True, device="cpu")
    if task == "classification":
        return {**common, "data": str(files["images"])}
    if task == "segmentation":
        return {
            **common,
            "data": str(files["voc"]),
            "task": "segmentation",
            "segmenter": "fcn",
            "input_size": 32,
        }
    return {
        **common,
        "data": str(files["coco"]),
        "task": "detection",
        "detector": "fcos",
        "fpn_channels": 32,
        "head_convs": 1,
        "input_size": 32,
    }


def _resolve(value: object, task: str, files: dict[str, Path]) -> object:
    names = {
        "TEACHER": str(files["teacher"]),
        "INIT": str(files["init"]),
        "OTHER": str(
            files[{"classification": "other", "detection": "other_coco"}.get(task, "other_voc")]
        ),
    }
    return names.get(value, value) if isinstance(value, str) else value


def _probe(task: str, files: dict[str, Path], values: dict[str, object], probe: Probe) -> object:
    values = {k: _resolve(v, task, files) for k, v in values.items()}
    values.setdefault("out", str(files["root"] / "run"))
    config = TrainConfig(**values)
    run, state = open_run(config, None, None, False, None)
    try:
        torch.manual_seed(0)
        return probe(run, state)
    finally:
        run.task.close()


def _with_out(values: dict[str, object], files: dict[str, Path]) -> dict[str, object]:
    return {"out": str(files["root"] / "run"), **values}


BASELINES: dict[tuple[str, str, Probe], object] = {}


def _differs(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape != b.shape or not torch.equal(a, b)
    if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b


def _cases() -> list[tuple[str, str]]:
    return [(task, f.name) for task in TASKS for f in dataclasses.fields(TrainConfig)]


def test_every_field_has_a_row():
    assert set(HONOURED) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(("task", "name"), _cases())
def test_option(task, name, files):
    """Honoured: the probe (or the named test) shows the effect. Refused: one line naming
    the option and the task, before anything is opened or written."""
    task_class = get_task(task)
    if name not in task_class.supported_options():
        field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
        changed = CHANGED_FOR_REFUSAL.get(name, HONOURED[name][0])
        assert changed != default_of(field)
        values = {**_base(task, files), **HONOURED[name][1], name: changed}
        values = {k: _resolve(v, task, files) for k, v in values.items()}
        out = files["root"] / f"refused-{task}-{name}"
        values["out"] = str(out)
        with pytest.raises(GhostnetError) as info:
            open_run(TrainConfig(**values), None, None, False, None)
        line = str(info.value)
        flag = "--" + name.replace("_", "-")
        assert "\n" not in line and flag in line and f"--task {task}" in line, line
        assert not out.exists()
        return
    changed, extra, probe = HONOURED[name]
    if isinstance(probe, str):  # shown by a whole run elsewhere: that test must exist
        path, test = probe.split("::")
        assert f"def {test}(" in (TESTS / path).read_text(), probe
        return
    base = {**_base(task, files), **extra}
    if name == "sync_bn":
        assert "needs CUDA" in str(_probe(task, files, {**base, name: changed}, probe))
        return
    if probe in (_optimizer, _lr_plan):  # the config alone decides: no run needed
        before = probe(TrainConfig(**_with_out(base, files)))
        after = probe(TrainConfig(**_with_out({**base, name: changed}, files)))
        assert _differs(before, after), f"--{name} {changed!r} changed nothing for {task}"
        return
    key = (task, repr(sorted(extra.items())), probe)
    if key not in BASELINES:  # shared by the fields with the same base and probe
        BASELINES[key] = _probe(task, files, base, probe)
    before = BASELINES[key]
    after = _probe(task, files, {**base, name: changed}, probe)
    assert _differs(before, after), f"--{name} {changed!r} changed nothing for {task}"


def test_loop_builds_optimizer_and_schedule_from_the_config(files):
    """For every task the run's optimizer is the one the config alone gives, and its
    schedule steps through the config's plan: the config-only probes above hold."""
    for task in TASKS:
        values = {**_base(task, files), "out": str(files["root"] / "o"), "sched": "step"}
        values["milestones"] = [1]
        run, state = open_run(TrainConfig(**values), None, None, False, None)
        assert _hyper(state.optimizer) == _optimizer(run.config)
        lrs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.config.epochs * run.steps_per_epoch):
                state.optimizer.step()
                state.scheduler.step()
                lrs.append(round(state.optimizer.param_groups[0]["lr"], 12))
        assert lrs == _lr_plan(run.config, run.steps_per_epoch)
        run.task.close()


def test_task_picks_its_task_object(files):
    for task in TASKS:
        values = {**_base(task, files), "out": str(files["root"] / "t")}
        run, _ = open_run(TrainConfig(**values), None, None, False, None)
        assert run.task.name == task and type(run.task) is get_task(task)
        run.task.close()
