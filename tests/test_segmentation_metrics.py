"""Confusion matrix, mIoU, per-class IoU and pixel accuracy against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from ghostnet.segmentation.metrics import ConfusionMatrix, metrics_from_matrix


def test_against_a_hand_computed_matrix() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    matrix = ConfusionMatrix(4)
    matrix.update(predicted, target)
    # rows = truth, columns = prediction; the 255 pixel is left out
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(matrix.matrix, expected)
    result = matrix.compute(["bg", "a", "b", "never"])
    # IoU = TP / (row + column - TP): bg 1/(2+3-1), a 2/(3+3-2), b 1/(2+1-1)
    assert result["per_class_iou"] == pytest.approx({"bg": 0.25, "a": 0.5, "b": 0.5, "never": None})
    assert result["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert result["pixel_acc"] == pytest.approx(4 / 7)
    assert result["pixels"] == 7


def test_logits_and_batches_accumulate() -> None:
    target = torch.randint(0, 3, (2, 5, 5))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    matrix = ConfusionMatrix(3)
    matrix.update(logits, target)
    matrix.update(logits[:1], target[:1])
    assert int(matrix.matrix.sum()) == 75
    assert matrix.compute()["miou"] == pytest.approx(1.0)


def test_sum_of_rank_matrices_equals_one_pass() -> None:
    """What all_reduce(SUM) does across ranks: the metrics of the summed matrix equal one
    pass over all the data (averaging per-rank mIoUs would not)."""
    target = torch.randint(0, 4, (4, 8, 8))
    predicted = torch.randint(0, 4, (4, 8, 8))
    whole, first, second = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(predicted, target)
    first.update(predicted[:2], target[:2])
    second.update(predicted[2:], target[2:])
    summed = metrics_from_matrix(first.matrix + second.matrix)
    assert summed == whole.compute()
    assert summed["miou"] != pytest.approx((first.compute()["miou"] + second.compute()["miou"]) / 2)
