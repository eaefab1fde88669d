"""Distillation: the loss against hand-computed values, the teacher's checks, and a run with
a teacher (eval mode, no grad, once per batch, never saved, resumable)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ghostnet import GhostnetError, ModelSpec, create_model
from ghostnet.checkpoint import read_checkpoint
from ghostnet.distill import FeatureMatch, TrainLoss, kd_loss, load_teacher
from ghostnet.train import config_from, fit

from .imagegen import make_image_folder


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    t = 2.0
    # softmax([0.5, 1, 1.5]) and softmax([1.5, 1, 0.5]) by hand
    es = [math.exp(v) for v in (0.5, 1.0, 1.5)]
    et = [math.exp(v) for v in (1.5, 1.0, 0.5)]
    p_s = [v / sum(es) for v in es]
    p_t = [v / sum(et) for v in et]
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * kl, rel=1e-6)
    assert kl == pytest.approx(0.32017, abs=1e-4)  # (p1 - p3) * ln(e): the ratio is e
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_train_loss_mixes_hard_and_soft_terms():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    kd = kd_loss(logits, teacher, 4.0)
    loss = TrainLoss(kd_alpha=0.3, kd_temperature=4.0)(logits, labels, teacher)
    assert loss.item() == pytest.approx((0.7 * ce + 0.3 * kd).item(), rel=1e-6)
    assert TrainLoss()(logits, labels, teacher).item() == pytest.approx(ce.item())
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])  # mixup/cutmix targets
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert TrainLoss()(logits, soft).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.fixture(scope="module")
def data_and_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    data = make_image_folder(root / "data", classes=3, per_class=8, size=32)
    config = config_from(
        None,
        model="resnet20_cifar",
        data=str(data),
        out=str(root / "teacher"),
        epochs=1,
        batch_size=8,
        quiet=True,
    )
    fit(config)
    return data, root / "teacher" / "best.pt"


def test_teacher_checks_are_one_line(data_and_teacher, tmp_path, monkeypatch):
    _, teacher = data_and_teacher
    size = (3, 32, 32)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(GhostnetError, match="not a readable PyTorch checkpoint"):
        load_teacher(str(junk), ["class_0", "class_1", "class_2"], size, torch.device("cpu"))
    with pytest.raises(GhostnetError, match="trained on 3 classes"):
        load_teacher(str(teacher), ["a", "b", "c", "d"], size, torch.device("cpu"))
    with pytest.raises(GhostnetError, match="file not found"):
        load_teacher(str(tmp_path / "missing.pt"), ["a"], size, torch.device("cpu"))
    # a named model with published weights, but 1000 ImageNet logits for 3 classes
    import ghostnet.models

    monkeypatch.setattr(
        ghostnet.models, "create_model", lambda name, pretrained: create_model("ghostnet_050")
    )
    with pytest.raises(GhostnetError, match="outputs \\(1000,\\) logits"):
        load_teacher("ghostnet_050", ["a", "b", "c"], (3, 64, 64), torch.device("cpu"))


def test_run_with_teacher(data_and_teacher, tmp_path, monkeypatch):
    """The teacher runs in eval mode, without gradients, once per batch; it is not in the
    student's checkpoint; a resumed run rebuilds it."""
    data, teacher_path = data_and_teacher
    import ghostnet.train.tasks.classification as classification

    calls: list[tuple[bool, bool]] = []
    real_load = classification.load_teacher

    def counting_load(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        teacher.register_forward_hook(
            lambda m, i, o: calls.append((m.training, torch.is_grad_enabled()))
        )
        return teacher

    monkeypatch.setattr(classification, "load_teacher", counting_load)
    out = tmp_path / "student"
    config = config_from(
        None,
        model="ghost_resnet20_cifar",
        data=str(data),
        out=str(out),
        epochs=1,
        batch_size=8,
        teacher=str(teacher_path),
        kd_alpha=0.7,
        kd_temperature=3.0,
        quiet=True,
    )
    summary = fit(config)
    assert len(calls) == 3 and all(not training and not grad for training, grad in calls)
    assert summary["teacher"] == str(teacher_path)
    checkpoint = read_checkpoint(out / "last.pt")
    student_keys = set(ModelSpec.from_dict(checkpoint["model_spec"]).build().state_dict())
    assert set(checkpoint["model"]) == student_keys  # nothing of the teacher saved
    calls.clear()
    more = config_from(
        None,
        model="ghost_resnet20_cifar",
        data=str(data),
        out=str(out),
        epochs=2,
        batch_size=8,
        teacher=str(teacher_path),
        kd_alpha=0.7,
        kd_temperature=3.0,
        quiet=True,
    )
    fit(more, resume=out / "last.pt")
    assert len(calls) == 3  # the teacher was rebuilt for the resumed epoch


def _two_layer_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)
    )
    student = copy.deepcopy(teacher)
    return student, teacher


def test_feature_match_loss_is_the_mean_relative_error():
    student, teacher = _two_layer_pair()
    features = FeatureMatch(student, teacher, "0, 2", 3.0, (3, 8, 8), torch.device("cpu"))
    assert features.names == ["0", "2"]
    x = torch.randn(2, 3, 8, 8)
    student(x), teacher(x)
    assert features.loss().item() == pytest.approx(0.0, abs=1e-12)  # identical maps
    with torch.no_grad():
        student[2].bias += 0.5  # only the last map moves, by 0.5 everywhere
    out_s = student(x)
    with torch.no_grad():
        out_t = teacher(x)
    expected = 3.0 * (0.25 / out_t.pow(2).mean().item()) / 2  # mean over the 2 modules
    loss = features.loss()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # the gradient reaches the student's weights
    assert student[2].bias.grad is not None and student[2].bias.grad.abs().sum() > 0
    assert out_s.requires_grad and not features.maps["student"]  # read and forgotten


def test_feature_match_keeps_no_eval_maps_and_removes_its_hooks():
    student, teacher = _two_layer_pair()
    features = FeatureMatch(student, teacher, "0, 2", 1.0, (3, 8, 8), torch.device("cpu"))
    x = torch.randn(2, 3, 8, 8)
    student.eval()
    student(x)  # an evaluation pass: nothing of it stays referenced
    assert not features.maps["student"]
    student.train()
    student(x), teacher(x)
    assert set(features.maps["student"]) == set(features.maps["teacher"]) == {"0", "2"}
    features.remove()
    assert not features.maps["student"] and not features.handles
    student(x), teacher(x)  # no hooks left on either model
    assert not features.maps["student"] and not features.maps["teacher"]
    assert not student[0]._forward_hooks and not teacher[2]._forward_hooks


def test_feature_match_checks_are_one_line():
    student, teacher = _two_layer_pair()
    size, cpu = (3, 8, 8), torch.device("cpu")
    with pytest.raises(GhostnetError, match=r"matches no module .* they share: 0, 1, 2"):
        FeatureMatch(student, teacher, "layer*", 1.0, size, cpu)
    student[2] = torch.nn.Conv2d(4, 5, 1)
    with pytest.raises(GhostnetError, match="module '2' outputs \\(5, 8, 8\\) in the student"):
        FeatureMatch(student, teacher, "*", 1.0, size, cpu)
    with pytest.raises(GhostnetError, match="--kd-features needs --teacher"):
        config_from(None, model="resnet20_cifar", data="d", out="o", kd_features="layer1.*")


def test_run_with_feature_distillation_pulls_the_maps_to_the_teachers(
    data_and_teacher, tmp_path, monkeypatch
):
    """The engine adds the feature term to the loss it optimises, once per step: the
    student's relative error to the teacher's block outputs falls as it trains."""
    data, teacher_path = data_and_teacher
    import ghostnet.distill as distill

    seen: list[tuple[float, bool]] = []
    real_loss = distill.FeatureMatch.loss

    def spying_loss(self):
        value = real_loss(self)
        seen.append((value.item() / self.weight, value.requires_grad))
        return value

    monkeypatch.setattr(distill.FeatureMatch, "loss", spying_loss)
    config = config_from(
        None,
        model="resnet20_cifar",
        data=str(data),
        out=str(tmp_path / "student"),
        epochs=4,
        batch_size=8,
        lr=0.05,
        seed=1,  # not the teacher's initial weights
        teacher=str(teacher_path),
        kd_features="layer?.?",
        kd_feature_weight=20.0,
        quiet=True,
    )
    fit(config)
    assert len(seen) == 12 and all(grad for _, grad in seen)  # 4 epochs x 3 steps
    first = sum(v for v, _ in seen[:3]) / 3
    last = sum(v for v, _ in seen[-3:]) / 3
    assert last < 0.8 * first, (first, last)
