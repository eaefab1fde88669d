"""Classification training img/s: the engine of another checkout vs this one's train.fit,
side by side in one process (interleaved rounds, 1 thread, generated 32x32 data).

    mkdir -p /tmp/ghostnet-before && git archive main src | tar -x -C /tmp/ghostnet-before
    OMP_NUM_THREADS=1 python benchmarks/train_loop_throughput.py 4
"""

import importlib
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch  # noqa: E402

torch.set_num_threads(1)
from tests.imagegen import make_image_folder  # noqa: E402
from trainer_throughput import cpu_line, load_package  # noqa: E402

load_package(Path("/tmp/ghostnet-before/src"), "ghostnet_before")
import ghostnet.train as after  # noqa: E402

before = importlib.import_module("ghostnet_before.engine")
tmp = Path(tempfile.mkdtemp())
data = make_image_folder(tmp / "data", classes=10, per_class=200, size=32, test_per_class=2)
speeds = {"before": [], "after": []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for label, mod in (
        (("before", before), ("after", after))
        if r % 2 == 0
        else (("after", after), ("before", before))
    ):
        out = tmp / f"{label}-{r}"
        config = mod.config_from(
            None,
            model="ghost_resnet20_cifar",
            data=str(data),
            out=str(out),
            epochs=1,
            batch_size=8,
            lr=0.05,
            quiet=True,
            device="cpu",
        )
        s = mod.fit(config)
        speeds[label].append(float(s["train_images_per_s"]))
        print(f"round {r + 1} {label:<6} {speeds[label][-1]:.1f} img/s", flush=True)
print("CPU:", cpu_line(), "torch", torch.__version__, "1 thread; 2000 images, batch 8 -> 250 steps")
for k, v in speeds.items():
    print(k, "median", f"{statistics.median(v):.1f}", "runs", [round(x, 1) for x in v])
print("after/before", statistics.median(speeds["after"]) / statistics.median(speeds["before"]))
