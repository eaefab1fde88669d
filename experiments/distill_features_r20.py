"""Distil the refined inherited Ghost-ResNet-20 (``--refine-steps 300``) from its original,
with feature-map distillation: the same ``train.fit`` call ``ghostnet compress`` makes,
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
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip_handover1 \
        --features 'layer?.?' --batch 32 --flip-only --anneal-steps 1563
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip_handover2 \
        --features 'layer?.?' --batch 32 --flip-only --anneal-steps 3126

    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip_lr04 --features 'layer?.?' \
        --batch 32 --flip-only --lr 0.04      # likewise --lr 0.01 (b32flip_lr01), 0.005
    OMP_NUM_THREADS=1 python distill_features_r20.py --out b32flip_d5 --features 'layer?.?' \
        --batch 32 --flip-only --dw-size 5 --init runs/compress/r20_inherit_d5/inherited.pt

run 10 (original retrained: 84.93; ``--init`` the inherited.pt of the
``r20_c3_flip_b16`` compress run, refine 300, start 71.31), the baseline and RepVGG-style
training branches (``--reparam``: a BN'd 1x1 branch beside each 3x3 primary conv, BN'd 1x1
and 3x3 depthwise branches beside each cheap op, all foldable, BN weights starting at 0):

    OMP_NUM_THREADS=1 python distill_features_r20.py --out s10_b32flip --features 'layer?.?' \
        --batch 32 --flip-only --init runs/compress/r20_c3_flip_b16/inherited.pt
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s10_b32flip_reparam \
        --features 'layer?.?' --batch 32 --flip-only --reparam \
        --init runs/compress/r20_c3_flip_b16/inherited.pt

run 11, the same start (raw ``s11_*``): the two settings above with ``--seed 1``
(run-to-run noise), AdamW, KD temperature 2 and GhostNetV3-like branch counts:

    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_seed1 \
        --features 'layer?.?' --batch 32 --flip-only --seed 1 --init INIT
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_reparam_seed1 \
        --features 'layer?.?' --batch 32 --flip-only --reparam --seed 1 --init INIT
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_adamw_lr1e3 \
        --features 'layer?.?' --batch 32 --flip-only --opt adamw --lr 1e-3 --init INIT
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_adamw_lr3e4 \
        --features 'layer?.?' --batch 32 --flip-only --opt adamw --lr 3e-4 --init INIT
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_reparam_t2 \
        --features 'layer?.?' --batch 32 --flip-only --reparam --kd-temperature 2 --init INIT
    OMP_NUM_THREADS=1 python distill_features_r20.py --out s11_b32flip_reparam3 \
        --features 'layer?.?' --batch 32 --flip-only --reparam --reparam-3x3 2 --init INIT

(INIT = runs/compress/r20_c3_flip_b16/inherited.pt.)

``runs/compress/r20_inherit_d5``: ``ghostnet compress --checkpoint runs/resnet20/best.pt
--dw-size 5 --refine-steps 300 --epochs 0`` (0-epoch top-1 72.21).
(``--anneal-steps``: 1563 steps = 1 epoch at batch 32; the summaries of these two runs do
not record it, the monkeypatch is outside the trainer's config.)

``runs/compress/r20_refine1000/inherited.pt``: the same compress call with
``--refine-steps 1000 --epochs 0`` (0-epoch top-1 73.81).
"""

import argparse
import logging

from ghostnet.config import config_from
from ghostnet.train import ClassificationTask, fit
from ghostnet.train.tasks.classification import build_classifier

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
parser.add_argument("--kd-temperature", type=float, default=4.0, help="the trainer's KD T")
parser.add_argument("--seed", type=int, default=0, help="the trainer's --seed")
parser.add_argument("--opt", default="sgd", choices=("sgd", "adamw"), help="the trainer's --opt")
parser.add_argument("--weight-decay", type=float, default=5e-4, help="the trainer's --weight-decay")
parser.add_argument("--dw-size", type=int, default=3, help="the --init model's cheap-op d")
parser.add_argument("--ema", type=float, default=0.0, help="EMA decay per step (0 = off)")
parser.add_argument(
    "--no-augment", action="store_true", help="train on the images as they are (no crop/flip)"
)
parser.add_argument("--flip-only", action="store_true", help="random horizontal flips only")
parser.add_argument(
    "--anneal-steps",
    type=int,
    default=0,
    help="hand each layer over from the original conv to its Ghost layer over this many steps",
)
parser.add_argument(
    "--reparam",
    action="store_true",
    help="train each Ghost layer with extra BN'd branches that fold away (RepVGG-style)",
)
parser.add_argument(
    "--reparam-3x3",
    type=int,
    default=0,
    help="with --reparam: this many extra BN'd 3x3 branches beside each primary conv and "
    "each cheap op (GhostNetV3 keeps 3)",
)
args = parser.parse_args()
# the student's builder, handed to the classification task (model_factory): the
# experiments below wrap it; the package's own build is the default
student_factory = build_classifier
if args.reparam:  # an experiment: over-parameterised training form, same deploy model
    import torch
    from torch import nn

    from ghostnet.layers import GhostConv2d

    class Branches(nn.Module):
        """conv(x) + sum of BN(branch(x)): branches of the same stride and groups whose
        kernels fit inside conv's, so in eval mode (BN affine) the sum folds exactly into
        one conv of conv's shape. Each branch BN starts with weight 0: the sum starts
        equal to conv(x)."""

        def __init__(self, conv: nn.Conv2d, kernels: list[int]) -> None:
            super().__init__()
            self.conv = conv
            self.branches = nn.ModuleList()
            for k in kernels:
                branch = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    k,
                    conv.stride,
                    k // 2,
                    groups=conv.groups,
                    bias=False,
                )
                bn = nn.BatchNorm2d(conv.out_channels)
                nn.init.zeros_(bn.weight)
                self.branches.append(nn.Sequential(branch, bn))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + sum(b(x) for b in self.branches)

    real_build = student_factory

    def build_reparam_model(config, classes, preset):
        model, spec, counts = real_build(config, classes, preset)
        for module in model.modules():
            if isinstance(module, GhostConv2d):
                k = module.primary_conv.kernel_size[0]
                extra = [3] * args.reparam_3x3
                if k == 3:  # a 1x1 branch beside each 3x3 primary conv
                    module.primary_conv = Branches(module.primary_conv, [1, *extra])
                cheap = module.cheap_operation
                module.cheap_operation = Branches(cheap, [1, cheap.kernel_size[0], *extra])
        return model, spec, counts

    student_factory = build_reparam_model
if args.anneal_steps:  # an experiment: each Ghost layer blended with its (frozen) original
    import torch
    from torch import nn

    from ghostnet.checkpoint import model_from_checkpoint
    from ghostnet.layers import GhostConv2d

    class Blend(nn.Module):
        """(1 - a) * ghost(x) + a * conv(x), a falling linearly from 1 to 0 over the
        training steps; at a = 0 it is exactly the Ghost layer."""

        def __init__(self, ghost: nn.Module, conv: nn.Conv2d, steps: int) -> None:
            super().__init__()
            self.ghost, self.conv, self.steps = ghost, conv.requires_grad_(False), steps
            self.register_buffer("step", torch.zeros((), dtype=torch.long))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ghost(x)
            if self.training:
                self.step += 1
            alpha = max(0.0, 1.0 - self.step.item() / self.steps)
            return y + alpha * (self.conv(x) - y) if alpha > 0 else y

    real_build_model = student_factory

    def build_model(config, classes, preset):
        model, spec, counts = real_build_model(config, classes, preset)
        original, _ = model_from_checkpoint(args.teacher)
        convs = dict(original.named_modules())
        for name, module in list(model.named_modules()):
            if isinstance(module, GhostConv2d):
                parent, _, leaf = name.rpartition(".")
                blend = Blend(module, convs[name], args.anneal_steps)
                setattr(model.get_submodule(parent) if parent else model, leaf, blend)
        return model, spec, counts

    student_factory = build_model

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

inherited = {
    "ratio": 2,
    "dw_size": args.dw_size,
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
    opt=args.opt,
    seed=args.seed,
    weight_decay=args.weight_decay,
    warmup_epochs=0.0,  # as compress: the start is trained
    ema=args.ema,
    teacher=args.teacher,
    init_weights=args.init,
    kd_alpha=0.5,
    kd_temperature=args.kd_temperature,
    batch_size=args.batch,
    # the trainer's --augment (these flags predate it; same transforms)
    augment="none" if args.no_augment else "flip" if args.flip_only else "crop-flip",
    kd_features=args.features,
    kd_feature_weight=args.weight,
    quiet=True,
)
summary = fit(config, task=ClassificationTask(config, model_factory=student_factory))
print("top-1", summary["top1"])
