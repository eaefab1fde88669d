"""Try the `ghostnet` CLI as a new user would: odd and bad inputs against every subcommand,
each run as its own process (what a user sees, exit status and stderr included). For every
case it records the exit status, the error line, whether a traceback was printed, and the
SHA-256 of every file of a finished run folder (and of the other inputs) before and after.

    .venv/bin/python benchmarks/cli_tryout.py --md docs/results/cli/tryout.md \
        --json docs/results/cli/tryout.json

A case passes when its exit status is the expected one (2 for bad input), at most one
`error:` line was printed, no traceback, and no input file changed (a case that is meant
to write, like resuming a run with more epochs, says so and is checked for that instead).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: int = 2  # exit status
    writes_run: bool = False  # the case is meant to change RUN (e.g. resume)
    stdin_tty: bool = False
    must_say: list[str] = field(default_factory=list)  # substrings of stderr+stdout
    must_create: list[str] = field(default_factory=list)  # files that must exist after
    must_not_create: list[str] = field(default_factory=list)


def write_images(root: Path, classes: int, per_class: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array([(200, 40, 40), (40, 60, 220)][c % 2], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def ghostnet(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "ghostnet", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def build_world(root: Path) -> dict[str, Path]:
    w = {"root": root}
    w["data"] = root / "data"
    write_images(w["data"] / "train", 2, 8, 32, 0)
    write_images(w["data"] / "test", 2, 4, 32, 1)
    w["odd"] = root / "odd"  # CIFAR-shaped, plus one 64 px image
    shutil.copytree(w["data"], w["odd"])
    Image.new("RGB", (64, 64), (128, 30, 30)).save(w["odd"] / "train" / "class_0" / "big.png")
    w["run"] = root / "run"
    done = ghostnet(
        [
            "train",
            "--model",
            "resnet20_cifar",
            "--data",
            str(w["data"]),
            "--out",
            str(w["run"]),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--quiet",
        ],
        root,
    )
    if done.returncode != 0:
        raise SystemExit(f"could not make the finished run: {done.stderr}")
    w["run2"] = root / "run_to_extend"  # a copy that resume cases may change
    shutil.copytree(w["run"], w["run2"])
    best = (w["run"] / "best.pt").read_bytes()
    w["junk"] = root / "junk.pt"
    w["junk"].write_bytes(np.random.default_rng(0).bytes(4096))
    w["empty"] = root / "empty.pt"
    w["empty"].write_bytes(b"")
    w["truncated"] = root / "truncated.pt"
    w["truncated"].write_bytes(best[: len(best) // 3])
    import torch
    from safetensors.torch import save_file

    state = torch.load(w["run"] / "best.pt", weights_only=True)["model"]
    w["st"] = root / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(w["st"]))
    w["st_truncated"] = root / "truncated.safetensors"
    w["st_truncated"].write_bytes(w["st"].read_bytes()[:5000])
    w["bare"] = root / "bare_state_dict.pt"
    torch.save(state, w["bare"])
    w["bomb"] = root / "bomb.png"
    Image.new("1", (20000, 10000)).save(w["bomb"])  # 200 Mpixel, past PIL's limit
    w["bombdir"] = root / "bombdata"
    shutil.copytree(w["data"], w["bombdir"])
    shutil.copy(w["bomb"], w["bombdir"] / "train" / "class_1" / "bomb.png")
    w["notimage"] = root / "notimage.png"
    w["notimage"].write_text("this is not a PNG")
    w["afile"] = root / "a_file.txt"
    w["afile"].write_text("a plain file\n")
    w["adir"] = root / "existing_dir"
    w["adir"].mkdir()
    w["emptydir"] = root / "empty_dir"
    w["emptydir"].mkdir()
    w["onnx"] = root / "m.onnx"
    made = ghostnet(
        ["export", "--checkpoint", str(w["run"] / "best.pt"), "--out", str(w["onnx"])], root
    )
    if made.returncode != 0:
        raise SystemExit(f"could not export: {made.stderr}")
    w["report"] = root / "report.json"
    w["report"].write_text('{"not": "a report"}')
    return w


def cases(w: dict[str, Path], out: Path) -> list[Case]:
    run, best, data = str(w["run"]), str(w["run"] / "best.pt"), str(w["data"])
    train = ["train", "--model", "resnet20_cifar", "--data", data, "--batch-size", "8", "--quiet"]
    o = str(out)
    c: list[Case] = []
    # ---- train: the run folder is never lost
    c += [
        Case(
            "train into a finished run, no --resume",
            [*train, "--out", run, "--epochs", "1"],
            must_say=["--resume", "--overwrite"],
        ),
        Case("train --epochs 0 into a finished run", [*train, "--out", run, "--epochs", "0"]),
        Case("train --out is an existing file", [*train, "--out", str(w["afile"])]),
        Case(
            "train --out under a file (cannot be created)",
            [*train, "--out", str(w["afile"] / "sub")],
        ),
        Case("train --out /proc/ghostnet (unwritable)", [*train, "--out", "/proc/ghostnet"]),
        Case("train --batch-size 0", [*train, "--out", o, "--batch-size", "0"]),
        Case("train --epochs -1", [*train, "--out", o, "--epochs", "-1"]),
        Case("train --lr nan", [*train, "--out", o, "--lr", "nan"]),
        Case("train --lr 0", [*train, "--out", o, "--lr", "0"]),
        Case("train --train-subset 0", [*train, "--out", o, "--train-subset", "0"]),
        Case("train --train-subset -5", [*train, "--out", o, "--train-subset", "-5"]),
        Case("train --workers -1", [*train, "--out", o, "--workers", "-1"]),
        Case("train --input-size 4", [*train, "--out", o, "--input-size", "4"]),
        Case("train --momentum 1", [*train, "--out", o, "--momentum", "1"]),
        Case("train --label-smoothing 1", [*train, "--out", o, "--label-smoothing", "1"]),
        Case("train --kd-alpha 1.5", [*train, "--out", o, "--kd-alpha", "1.5"]),
        Case("train --mixup -1", [*train, "--out", o, "--mixup", "-1"]),
        Case("train --milestones a,b", [*train, "--out", o, "--milestones", "a,b"]),
        Case("train --opt lamb", [*train, "--out", o, "--opt", "lamb"]),
        Case("train --recipe nope", [*train, "--out", o, "--recipe", "nope"]),
        Case("train --model nope_model", [*train, "--out", o, "--model", "nope_model"]),
        Case("train --model timm:nope", [*train, "--out", o, "--model", "timm:nope"]),
        Case("train --model torchvision:nope", [*train, "--out", o, "--model", "torchvision:nope"]),
        Case("train --data missing", [*train, "--out", o, "--data", str(w["root"] / "nope")]),
        Case("train --data is a file", [*train, "--out", o, "--data", str(w["afile"])]),
        Case("train --data empty folder", [*train, "--out", o, "--data", str(w["emptydir"])]),
        Case("train --teacher random bytes", [*train, "--out", o, "--teacher", str(w["junk"])]),
        Case("train --teacher truncated", [*train, "--out", o, "--teacher", str(w["truncated"])]),
        Case("train --teacher bare state_dict", [*train, "--out", o, "--teacher", str(w["bare"])]),
        Case(
            "train --init-weights truncated .safetensors",
            [*train, "--out", o, "--init-weights", str(w["st_truncated"])],
        ),
        Case(
            "train --init-weights missing",
            [*train, "--out", o, "--init-weights", str(w["root"] / "nope.pt")],
        ),
        Case("train --task segmentation", [*train, "--out", o, "--task", "segmentation"]),
        Case(
            "train --task detection without --detector", [*train, "--out", o, "--task", "detection"]
        ),
        Case(
            "train --task detection on an image folder",
            [*train, "--out", o, "--task", "detection", "--detector", "fcos"],
        ),
        Case("train --resume with no checkpoint", [*train, "--out", o, "--resume"]),
        Case("train --resume random bytes", [*train, "--out", o, "--resume", str(w["junk"])]),
        Case(
            "train --resume with a different --model",
            [*train, "--out", run, "--resume", "--model", "ghost_resnet20_cifar"],
        ),
        Case(
            "train --resume with a different --recipe",
            [*train, "--out", run, "--resume", "--recipe", "cifar-fast"],
        ),
        Case("train --resume with --ghostify", [*train, "--out", run, "--resume", "--ghostify"]),
        Case(
            "train --resume --epochs 1 (fewer than done)",
            [*train, "--out", run, "--resume", "--epochs", "1"],
        ),
        Case(
            "train --resume --epochs 3 --lr 0.05 (re-planned, said)",
            [*train, "--out", str(w["run2"]), "--resume", "--epochs", "3", "--lr", "0.05"],
            expect=0,
            must_say=["epoch 3"],
        ),
        Case(
            "train, decompression-bomb image in the data (skipped, named)",
            [*train, "--out", o, "--data", str(w["bombdir"]), "--epochs", "1"],
            expect=0,
            must_say=["bomb.png"],
            must_create=["skipped_images.txt"],
        ),
        Case(
            "train --strict-data, decompression-bomb image",
            [*train, "--out", o, "--data", str(w["bombdir"]), "--epochs", "1", "--strict-data"],
            must_say=["bomb.png"],
        ),
        Case(
            "train, one 64 px image among 32 px ones (warned, stays 32 px)",
            [*train, "--out", o, "--data", str(w["odd"]), "--epochs", "1"],
            expect=0,
            must_say=["1 of", "32"],
        ),
    ]
    # ---- eval / predict / analyze / export / compress / bench / profile / others
    c += [
        Case(
            "eval --checkpoint random bytes",
            ["eval", "--checkpoint", str(w["junk"]), "--data", data],
            must_say=["junk.pt"],
        ),
        Case(
            "eval --checkpoint empty file",
            ["eval", "--checkpoint", str(w["empty"]), "--data", data],
        ),
        Case(
            "eval --checkpoint truncated .pt",
            ["eval", "--checkpoint", str(w["truncated"]), "--data", data],
        ),
        Case(
            "eval --checkpoint truncated .safetensors",
            ["eval", "--checkpoint", str(w["st_truncated"]), "--data", data],
        ),
        Case(
            "eval --checkpoint bare .safetensors (no model name)",
            ["eval", "--checkpoint", str(w["st"]), "--data", data],
        ),
        Case(
            "eval --checkpoint bare state_dict .pt",
            ["eval", "--checkpoint", str(w["bare"]), "--data", data],
        ),
        Case(
            "eval --checkpoint missing",
            ["eval", "--checkpoint", str(w["root"] / "no.pt"), "--data", data],
        ),
        Case("eval --checkpoint is a folder", ["eval", "--checkpoint", run, "--data", data]),
        Case(
            "eval --data missing", ["eval", "--checkpoint", best, "--data", str(w["root"] / "nope")]
        ),
        Case(
            "eval --batch-size 0",
            ["eval", "--checkpoint", best, "--data", data, "--batch-size", "0"],
        ),
        Case(
            "eval --backend onnxruntime with a .pt",
            ["eval", "--backend", "onnxruntime", "--checkpoint", best, "--data", data],
        ),
        Case(
            "predict decompression bomb",
            ["predict", "--checkpoint", best, str(w["bomb"])],
            must_say=["bomb.png"],
        ),
        Case(
            "predict not-an-image file",
            ["predict", "--checkpoint", best, str(w["notimage"])],
            must_say=["notimage.png"],
        ),
        Case(
            "predict missing image", ["predict", "--checkpoint", best, str(w["root"] / "nope.jpg")]
        ),
        Case("predict empty folder", ["predict", "--checkpoint", best, str(w["emptydir"])]),
        Case(
            "predict --checkpoint truncated .safetensors",
            ["predict", "--checkpoint", str(w["st_truncated"]), str(w["data"] / "test")],
        ),
        Case(
            "predict --checkpoint random bytes",
            ["predict", "--checkpoint", str(w["junk"]), str(w["data"] / "test")],
        ),
        Case(
            "predict --topk 0",
            ["predict", "--checkpoint", best, "--topk", "0", str(w["data"] / "test")],
        ),
        Case(
            "predict --backend onnxruntime, exported at 32 px",
            ["predict", "--backend", "onnxruntime", str(w["onnx"]), str(w["data"] / "test")],
            expect=0,
        ),
        Case(
            "analyze --num-images 0",
            ["analyze", "--checkpoint", best, "--images", data, "--num-images", "0", "--out", o],
        ),
        Case(
            "analyze decompression bomb",
            ["analyze", "--checkpoint", best, "--images", str(w["bomb"]), "--out", o],
        ),
        Case(
            "analyze --checkpoint truncated .safetensors",
            ["analyze", "--checkpoint", str(w["st_truncated"]), "--images", data, "--out", o],
        ),
        Case(
            "analyze --threshold 2",
            ["analyze", "--checkpoint", best, "--images", data, "--threshold", "2", "--out", o],
        ),
        Case(
            "analyze --out is a file",
            ["analyze", "--checkpoint", best, "--images", data, "--out", str(w["afile"])],
        ),
        Case(
            "export --out is an existing folder",
            ["export", "--checkpoint", best, "--out", str(w["adir"])],
            must_say=["existing_dir"],
        ),
        Case(
            "export --checkpoint truncated .safetensors",
            ["export", "--checkpoint", str(w["st_truncated"]), "--out", o + ".onnx"],
        ),
        Case(
            "export --model X --checkpoint of model Y",
            [
                "export",
                "--model",
                "ghost_resnet20_cifar",
                "--checkpoint",
                best,
                "--out",
                o + ".onnx",
            ],
            must_say=["resnet20_cifar"],
        ),
        Case(
            "export --int8 --calibration empty folder",
            [
                "export",
                "--checkpoint",
                best,
                "--int8",
                "--calibration",
                str(w["emptydir"]),
                "--out",
                o + ".onnx",
            ],
        ),
        Case(
            "export --int8 without --calibration",
            ["export", "--checkpoint", best, "--int8", "--out", o + ".onnx"],
        ),
        Case(
            "export --input-size 3,64,64 writes one self-contained file",
            ["export", "--checkpoint", best, "--input-size", "3,64,64", "--out", o + ".onnx"],
            expect=0,
            must_not_create=[o + ".onnx.data", o + ".data"],
        ),
        Case(
            "compress --checkpoint random bytes",
            ["compress", "--checkpoint", str(w["junk"]), "--data", data, "--out", o],
        ),
        Case(
            "compress --calibration-images 1",
            [
                "compress",
                "--checkpoint",
                best,
                "--data",
                data,
                "--out",
                o,
                "--calibration-images",
                "1",
            ],
        ),
        Case(
            "compress --ratio 1",
            ["compress", "--checkpoint", best, "--data", data, "--out", o, "--ratio", "1"],
        ),
        Case(
            "compress --out holds a run",
            ["compress", "--checkpoint", best, "--data", data, "--out", run],
        ),
        Case(
            "bench --backends nope", ["bench", "--models", "resnet20_cifar", "--backends", "nope"]
        ),
        Case(
            "bench --batch-sizes 0", ["bench", "--models", "resnet20_cifar", "--batch-sizes", "0"]
        ),
        Case("bench --threads 0", ["bench", "--models", "resnet20_cifar", "--threads", "0"]),
        Case("profile nope_model", ["profile", "nope_model"]),
        Case("profile --input-size 3,x,4", ["profile", "resnet20_cifar", "--input-size", "3,x,4"]),
        Case(
            "profile --ratio 0 --ghostify",
            ["profile", "resnet20_cifar", "--ghostify", "--ratio", "0"],
        ),
        Case(
            "profile --from-report not a report",
            ["profile", "resnet20_cifar", "--from-report", str(w["report"])],
        ),
        Case(
            "ghostify --save to a folder", ["ghostify", "resnet20_cifar", "--save", str(w["adir"])]
        ),
        Case("paper-table --results random bytes", ["paper-table", "--results", str(w["junk"])]),
        Case("unknown subcommand", ["frobnicate"]),
    ]
    return c


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--md", default=None, help="write the table as Markdown here")
    p.add_argument("--json", default=None, help="write every case's record here")
    p.add_argument("--keep", default=None, help="build the fixtures in this folder and keep it")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    args = p.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="ghostnet-tryout-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    w = build_world(root)
    inputs = [w[k] for k in w if k not in ("root", "run2") and w[k].exists()]
    run_at_start = digest([w["run"]])
    records, failures = [], 0
    for i, case in enumerate(cases(w, root / "fresh_out")):
        if args.only and args.only not in case.name:
            continue
        out = root / "fresh_out"
        shutil.rmtree(out, ignore_errors=True)
        for extra in (root / "fresh_out.onnx", root / "fresh_out.onnx.data"):
            extra.unlink(missing_ok=True)
        before_run = digest([w["run"]])
        before_inputs = digest([x for x in inputs if x != w["run"]])
        proc = ghostnet(case.argv, root)
        text = proc.stderr + proc.stdout
        error_lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
        after_run = digest([w["run"]])
        changed_inputs = sorted(
            k
            for k, v in digest([x for x in inputs if x != w["run"]]).items()
            if before_inputs.get(k) != v
        ) + sorted(set(before_inputs) - set(digest([x for x in inputs if x != w["run"]])))
        run_same = before_run == after_run
        problems = []
        if proc.returncode != case.expect:
            problems.append(f"exit {proc.returncode}, expected {case.expect}")
        if "Traceback" in proc.stderr:
            problems.append("traceback")
        if case.expect == 2 and len(error_lines) != 1:
            problems.append(f"{len(error_lines)} error lines")
        if not case.writes_run and not run_same:
            problems.append("the finished run folder changed")
        if changed_inputs:
            problems.append(f"inputs changed: {changed_inputs}")
        problems += [f"does not say {s!r}" for s in case.must_say if s not in text]
        problems += [f"{f} not written" for f in case.must_create if not (out / f).exists()]
        problems += [f"{f} written" for f in case.must_not_create if Path(f).exists()]
        message = error_lines[0] if error_lines else (proc.stderr.strip().splitlines() or [""])[-1]
        record = {
            "case": case.name,
            "argv": ["ghostnet", *[a.replace(str(root), "$W") for a in case.argv]],
            "exit": proc.returncode,
            "message": message.replace(str(root), "$W")[:300],
            "run_folder_sha256_unchanged": run_same,
            "run_folder_files": len(before_run),
            "ok": not problems,
            "problems": problems,
        }
        records.append(record)
        failures += bool(problems)
        mark = "ok  " if not problems else "FAIL"
        print(
            f"{mark} [{i:2d}] {case.name}: exit {proc.returncode}: {record['message']}"
            + (f"  <-- {problems}" if problems else ""),
            flush=True,
        )
    run_digest = {k.replace(str(root), "$W"): v[:16] for k, v in digest([w["run"]]).items()}
    summary = {
        "cases": len(records),
        "failures": failures,
        "wall_s": round(time.perf_counter() - started, 1),
        "run_folder_sha256_prefix_before_all_cases": {
            k.replace(str(root), "$W"): v[:16] for k, v in run_at_start.items()
        },
        "run_folder_sha256_prefix_after_all_cases": run_digest,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "records": records}, indent=2))
    if args.md:
        lines = [
            "| # | case | exit | message (first `error:` line, else last stderr line) "
            "| run folder unchanged | ok |",
            "|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(records):
            msg = r["message"].replace("|", "\\|")
            lines.append(
                f"| {i} | {r['case']} | {r['exit']} | {msg} | "
                f"{'yes' if r['run_folder_sha256_unchanged'] else 'NO'} | "
                f"{'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['problems'])} |"
            )
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text("\n".join(lines) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
