"""Probe (run 11, #11): does re-estimating BN statistics after the 3-epoch distillation
("precise BN") lift the distilled Ghost-ResNet-20? The trainer's running statistics are an
exponential average over the last steps of a moving model; this recomputes them with the
final weights on N class-balanced training images (prepared as for evaluation), then
evaluates on the full CIFAR-10 test set.

    python experiments/precise_bn_r20.py runs/probe/s10_b32flip/last.pt 2048 8192
"""

import sys

import torch

from ghostnet.checkpoint import model_from_checkpoint
from ghostnet.compress import reestimate_bn
from ghostnet.data import ImageDataset, Preset, build_transform, calibration_images, open_data
from ghostnet.engine import eval_loader, evaluate


def main() -> None:
    path, counts = sys.argv[1], [int(a) for a in sys.argv[2:]]
    model, checkpoint = model_from_checkpoint(path)
    preset = Preset.from_dict(checkpoint["preset"])
    source = open_data("../shared/data/cifar10")
    test = ImageDataset(source.eval, build_transform(preset, train=False))

    def top1(net: torch.nn.Module) -> float:
        return evaluate(net.eval(), eval_loader(test, 500, 0), torch.device("cpu"), 10)["top1"]

    print("as trained", top1(model), flush=True)
    for count in counts:
        model, _ = model_from_checkpoint(path)
        reestimate_bn(model, calibration_images(source.train, preset, count, 1))
        print("precise BN on", count, "training images", top1(model), flush=True)


if __name__ == "__main__":
    main()
