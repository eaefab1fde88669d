"""Property-style CLI test: generated bad arguments for every subcommand end with exit
status 2, one error line, no traceback, and no file changed outside a fresh --out."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghostnet.cli import main
from ghostnet.cli.common import option_flag_type
from ghostnet.config import TrainConfig, flag_fields
from ghostnet.train import config_from, fit

from .imagegen import make_image_folder

# flag -> bad values; "{X}" names a fixture file (see `world` below)
TRAIN_BAD = {
    "--epochs": ["0", "-1", "x"],
    "--batch-size": ["0", "-3"],
    "--lr": ["0", "-1", "nan", "inf"],
    "--momentum": ["1", "-0.5"],
    "--weight-decay": ["-1"],
    "--warmup-epochs": ["-1"],
    "--gamma": ["0", "2"],
    "--label-smoothing": ["1", "-0.1"],
    "--ema": ["1", "-0.5"],
    "--randaugment": ["-1", "99"],
    "--augment": ["crops", ""],
    "--random-erase": ["1.5", "-0.1"],
    "--mixup": ["-1"],
    "--cutmix": ["-0.5"],
    "--kd-alpha": ["-0.1", "1.1"],
    "--kd-temperature": ["0", "-2"],
    "--teacher": ["{junk}", "{missing}", "{weights}"],
    "--init-weights": ["{missing}", "{junk}"],
    "--workers": ["-1"],
    "--input-size": ["0", "4"],
    "--train-subset": ["0", "-5"],
    "--eval-subset": ["0"],
    "--log-every": ["0"],
    "--checkpoint-every": ["-1"],
    "--milestones": ["a,b"],
    "--opt": ["lamb"],
    "--recipe": ["nope"],
    "--data": ["{missing}", "{junk}"],
    "--out": ["{junk}", "{run}"],
    "--model": ["nope_model"],
    "--task": ["segmentation"],
}
EVAL_BAD = {
    "--checkpoint": ["{junk}", "{missing}", "{truncated}", "{weights}", "{empty}"],
    "--data": ["{missing}", "{junk}"],
    "--batch-size": ["0", "-1"],
    "--workers": ["-2"],
}
PREDICT_BAD = {
    "--checkpoint": ["{junk}", "{truncated}", "{weights}"],
    "--topk": ["0", "-1"],
    "--batch-size": ["0"],
    "IMAGE": ["{missing}", "{bomb}", "{junk}"],
}
ANALYZE_BAD = {
    "--checkpoint": ["{junk}", "{truncated}"],
    "--images": ["{missing}", "{bomb}"],
    "--num-images": ["0", "-4"],
    "--threshold": ["-1", "2"],
    "--out": ["{junk}"],
}
EXPORT_BAD = {
    "--checkpoint": ["{junk}", "{truncated}", "{missing}"],
    "--out": ["{data}"],
}
PROFILE_BAD = {
    "MODEL": ["nope_model"],
    "--input-size": ["0,0,0", "3,x,4"],
    "--ratio": ["0", "-2"],
    "--dw-size": ["2", "0"],
    "--from-report": ["{junk}", "{missing}"],
}
BENCH_BAD = {
    "--models": ["nope_model"],
    "--batch-sizes": ["0", "x"],
    "--backends": ["nope"],
    "--threads": ["0"],
    "--repeats": ["0"],
}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = make_image_folder(root / "data", classes=2, per_class=4, size=16)
    fit(
        config_from(
            None,
            model="resnet20_cifar",
            data=str(data),
            out=str(root / "run"),
            epochs=1,
            batch_size=4,
            quiet=True,
        )
    )
    junk = root / "junk.bin"
    junk.write_bytes(os.urandom(2000))
    (root / "empty.pt").write_bytes(b"")
    best = (root / "run" / "best.pt").read_bytes()
    (root / "truncated.pt").write_bytes(best[: len(best) // 3])
    import torch
    from safetensors.torch import save_file

    state = torch.load(root / "run" / "best.pt", weights_only=True)["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "weights.safetensors"))
    from PIL import Image

    Image.new("1", (20000, 10000)).save(root / "bomb.png")  # past PIL's bomb limit
    return {
        "root": root,
        "data": data,
        "run": root / "run",
        "junk": junk,
        "missing": root / "missing.pt",
        "empty": root / "empty.pt",
        "truncated": root / "truncated.pt",
        "weights": root / "weights.safetensors",
        "bomb": root / "bomb.png",
    }


def _base(command: str, w: dict[str, Path], out: Path) -> dict[str, str]:
    best = str(w["run"] / "best.pt")
    return {
        "train": {
            "--model": "resnet20_cifar",
            "--data": str(w["data"]),
            "--out": str(out),
            "--epochs": "1",
            "--batch-size": "4",
            "--quiet": None,
        },
        "eval": {"--checkpoint": best, "--data": str(w["data"])},
        "predict": {"--checkpoint": best, "IMAGE": str(w["data"] / "test")},
        "analyze": {
            "--checkpoint": best,
            "--images": str(w["data"]),
            "--out": str(out),
            "--num-images": "4",
        },
        "export": {"--checkpoint": best, "--out": str(out / "m.onnx")},
        "profile": {"MODEL": "resnet20_cifar", "--ghostify": None},
        "paper-table": {},
        "ghostify": {"MODEL": "resnet20_cifar", "--save": str(out / "g.safetensors")},
        "bench": {
            "--models": "resnet20_cifar",
            "--batch-sizes": "1",
            "--backends": "eager",
            "--repeats": "1",
            "--warmup": "0",
        },
    }[command]


PAPER_BAD = {"--results": ["{missing}", "{junk}"]}
GHOSTIFY_BAD = {
    "--save": ["{root}", "{junk}/under_a_file.safetensors"],
    "--ratio": ["0"],
    "MODEL": ["nope_model"],
}

TABLE = {
    "train": TRAIN_BAD,
    "eval": EVAL_BAD,
    "predict": PREDICT_BAD,
    "analyze": ANALYZE_BAD,
    "export": EXPORT_BAD,
    "profile": PROFILE_BAD,
    "bench": BENCH_BAD,
    "paper-table": PAPER_BAD,
    "ghostify": GHOSTIFY_BAD,
}
CASES = [
    (cmd, flag, value) for cmd, bad in TABLE.items() for flag, vs in bad.items() for value in vs
]


def _argv(command: str, args: dict[str, str | None]) -> list[str]:
    argv = [command]
    for key, value in args.items():
        if key in ("IMAGE", "MODEL"):
            continue
        argv.append(key)
        if value is not None:
            argv.append(value)
    argv += [args[k] for k in ("MODEL", "IMAGE") if k in args]
    return argv


def _assert_clean_failure(world, capsys, command, args, out):
    before = _digest(world["root"])
    code = _run_main(_argv(command, args))
    err = capsys.readouterr().err
    assert code == 2, f"{_argv(command, args)}: exit {code}\n{err}"
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    after = _digest(world["root"])
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not {k for k in changed if not k.startswith(out.name)}, changed
    if command == "train":
        assert not out.exists(), "a failed train start left its folder behind"
    return lines[0]


def _run_main(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]}={c[2]}")
def test_bad_arguments_fail_cleanly(world, capsys, case, tmp_path):
    """Every bad value in the tables above, for every subcommand."""
    command, flag, value = case
    out = world["root"] / f"out-{tmp_path.name}"
    args = _base(command, world, out)
    args[flag] = value.format(**{k: str(v) for k, v in world.items()})
    _assert_clean_failure(world, capsys, command, args, out)


def _out_of_range(f) -> st.SearchStrategy:
    """Values just outside (or far outside) a TrainConfig field's documented range."""
    meta, options = f.metadata, []
    integral = option_flag_type(TrainConfig, f.name) is int
    if meta.get("low") is not None:
        low = meta["low"]
        edge = [low] if meta["low_open"] else []
        below = (
            st.integers(-(10**6), math.ceil(low) - 1)
            if integral
            else st.floats(-1e6, low, exclude_max=True, allow_nan=False)
        )
        options.append(st.one_of(below, st.sampled_from(edge)) if edge else below)
    if meta.get("high") is not None:
        high = meta["high"]
        edge = [high] if meta["high_open"] else []
        above = (
            st.integers(int(high) + 1, 10**6)
            if integral
            else st.floats(high, 1e6, exclude_min=True, allow_nan=False)
        )
        options.append(st.one_of(above, st.sampled_from(edge)) if edge else above)
    if not integral:
        options.append(st.sampled_from([float("nan"), float("inf")]))
    return st.one_of(*options)


RANGED = [
    f
    for f in flag_fields()
    if f.metadata.get("low") is not None or f.metadata.get("high") is not None
]


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_out_of_range_train_values_are_refused(world, capsys, data):
    """Property: for any numeric train flag and any value outside the range its field
    documents, train exits 2 with one line naming the flag, and writes nothing."""
    f = data.draw(st.sampled_from(RANGED), label="field")
    value = data.draw(_out_of_range(f), label="value")
    flag = "--" + f.name.replace("_", "-")
    out = world["root"] / "out-property"
    args = _base("train", world, out)
    args[flag] = repr(value) if isinstance(value, float) else str(value)
    before = _digest(world["root"])
    code = _run_main(_argv("train", args))
    err = capsys.readouterr().err
    assert code == 2, (flag, value, err)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err
    assert _digest(world["root"]) == before and not out.exists()
