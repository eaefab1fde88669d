"""Distil the inherited Ghost-ResNet-20 of r20_c0 (BN re-estimated) from its original:
the same train.fit call `ghostnet compress` makes, run on its own to skip compress's
repeated inherit + evaluations (already in r20_c0/summary.json)."""

import json
import sys

from ghostnet.config import config_from
from ghostnet.engine import fit

out, subset, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open("/work/runs/compress/r20_c0/summary.json") as f:
    c0 = json.load(f)
spec = c0["inherited"]["checkpoint"]
config = config_from(
    "cifar-fast",
    model="resnet20_cifar",
    model_kwargs={"num_classes": 10},
    ghostify={
        "ratio": 2,
        "dw_size": 3,
        "skip_first": True,
        "include": None,
        "exclude": None,
        "inherited": True,
    },
    data="/work/shared/data/cifar10",
    out=out,
    epochs=epochs,
    lr=0.01,
    warmup_epochs=0.0,
    ema=0.0,
    teacher="/work/runs/compress/r20_epoch9_best.pt",
    init_weights=spec,
    train_subset=subset,
    preset="cifar",
    input_size=32,
    quiet=True,
)
summary = fit(config)
print(json.dumps({k: summary[k] for k in ("top1", "top5", "best_top1", "wall_s", "train_images")}))
