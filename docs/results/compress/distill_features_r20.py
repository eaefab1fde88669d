"""Distil the refined inherited Ghost-ResNet-20 (``--refine-steps 300``) from its original,
with feature-map distillation: the same ``engine.fit`` call ``ghostnet compress`` makes,
run on its own so that several distillation settings share one inherit.

``--init`` is the ``inherited.pt`` of
``ghostnet compress --checkpoint runs/resnet20/best.pt --refine-steps 300 ...`` (seed 0; its
0-epoch top-1 is 71.86). Runs of this folder (``r20_kd_features/``):

    OMP_NUM_THREADS=1 python distill_features_r20.py --out f1 --features 'layer?.?'
    OMP_NUM_THREADS=1 python distill_features_r20.py --out f5 --features 'layer?.?' --weight 5
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b64 --features 'layer?.?' --batch 64
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32 --features 'layer?.?' --batch 32
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b64e8 --features 'layer?.?' \
        --batch 64 --epochs 8
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32ema --features 'layer?.?' \
        --batch 32 --ema 0.998
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32noaug --features 'layer?.?' \
        --batch 32 --no-augment
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip --features 'layer?.?' \
        --batch 32 --flip-only
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32noaug_r1000 --features 'layer?.?' \
        --batch 32 --no-augment --init runs/compress/r20_refine1000/inherited.pt
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip_r1000 --features 'layer?.?' \
        --batch 32 --flip-only --init runs/compress/r20_refine1000/inherited.pt

``runs/compress/r20_refine1000/inherited.pt``: the same compress call with
``--refine-steps 1000 --epochs 0`` (0-epoch top-1 73.81).
"""

import argparse
import logging

from torchvision.transforms import v2

from ghostnet import engine
from ghostnet.config import config_from
from ghostnet.engine import fit

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--init", default="runs/compress/r20_refine300_lr02/inherited.pt")
parser.add_argument("--teacher", default="runs/resnet20/best.pt")
parser.add_argument("--data", default="../shared/data/cifar10")
parser.add_argument("--lr", type=float, default=0.02)
parser.add_argument("--features", default=None, help="--kd-features patterns")
parser.add_argument("--weight", type=float, default=1.0, help="--kd-feature-weight")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--ema", type=float, default=0.0, help="EMA decay per step (0 = off)")
parser.add_argument(
    "--no-augment", action="store_true", help="train on the images as they are (no crop/flip)"
)
parser.add_argument("--flip-only", action="store_true", help="random horizontal flips only")
args = parser.parse_args()
if args.no_augment or args.flip_only:  # an experiment, not a trainer option
    real_build_transform = engine.build_transform

    def build_transform(preset, train, *rest):
        plain = real_build_transform(preset, False, *rest)  # the eval transform
        return v2.Compose([v2.RandomHorizontalFlip(), plain]) if train and args.flip_only else plain

    engine.build_transform = build_transform
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

inherited = {
    "ratio": 2,
    "dw_size": 3,
    "skip_first": True,
    "include": None,
    "exclude": None,
    "inherited": True,
}
config = config_from(
    "cifar-fast",
    model="resnet20_cifar",
    model_kwargs={"num_classes": 10},
    ghostify=inherited,
    data=args.data,
    out=args.out,
    epochs=args.epochs,
    lr=args.lr,
    warmup_epochs=0.0,  # as compress: the start is trained
    ema=args.ema,
    teacher=args.teacher,
    init_weights=args.init,
    kd_alpha=0.5,
    kd_temperature=4.0,
    batch_size=args.batch,
    kd_features=args.features,
    kd_feature_weight=args.weight,
    quiet=True,
)
summary = fit(config)
print("top-1", summary["top1"])
