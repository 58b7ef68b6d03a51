"""Evaluation (§3.2): dense scoring, flips, multi-crop, metrics, multi-scale defaults."""

import pytest
import torch

from vggnet.classification.evaluate import compute_metrics, default_test_scales, per_class_accuracy, topk_errors
from vggnet.inference import dense_posterior, multi_crop_posterior
from vggnet.models import vgg

TINY = dict(width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)


def lively(model):
    """The paper's N(0, 0.01^2) FC init gives near-uniform posteriors in a tiny net;
    He-scaled FC weights make the class scores O(1) so that the tests can tell methods apart."""
    for m in model.classifier:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    return lively(vgg("A", num_classes=7, **TINY))


def test_dense_at_crop_size_equals_forward(net):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)
    post = dense_posterior(net, x, flip=False)
    torch.testing.assert_close(post, logits.softmax(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw,expected", [((32, 32), (1, 1)), ((64, 96), (2, 3)), ((33, 70), (1, 2))])
def test_score_map_size(net, hw, expected):
    with torch.no_grad():
        scores = net.dense(torch.randn(1, 3, *hw))
    assert tuple(scores.shape) == (1, 7, *expected)


def test_dense_averages_the_score_map_before_softmax(net):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        scores = net.dense(x)  # (2, 7, 2, 3)
    expected = scores.mean(dim=(2, 3)).softmax(1)
    torch.testing.assert_close(dense_posterior(net, x, flip=False), expected)
    # and it is not the mean of per-position softmaxes
    assert not torch.allclose(expected, scores.softmax(1).mean(dim=(2, 3)), atol=1e-6)


def test_flip_averaging_is_symmetric(net):
    x = torch.randn(2, 3, 64, 96)
    a = dense_posterior(net, x, flip=True)
    b = dense_posterior(net, x.flip(-1), flip=True)
    torch.testing.assert_close(a, b)
    half = (dense_posterior(net, x, flip=False) + dense_posterior(net, x.flip(-1), flip=False)) / 2
    torch.testing.assert_close(a, half)
    assert torch.allclose(a.sum(1), torch.ones(2))


def test_multi_crop_posterior_is_mean_softmax(net):
    crops = torch.randn(4, 10, 3, 32, 32)  # 4 images x 10 crops
    with torch.no_grad():
        expected = net(crops.flatten(0, 1)).softmax(1).view(4, 10, 7).mean(1)
    torch.testing.assert_close(multi_crop_posterior(net, crops, batch_size=7), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multi_crop_posterior(net, crops[2]), expected[2], rtol=1e-5, atol=1e-6)


def test_topk_errors_on_known_posteriors():
    # ranks of the labels: 1st, 2nd, 6th, 5th  -> top-1 correct 1/4, top-5 correct 3/4
    post = torch.tensor([[0.7, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]] * 4)
    labels = torch.tensor([0, 1, 5, 4])
    assert topk_errors(post, labels) == {"top1_error": 75.0, "top5_error": 25.0}
    m = compute_metrics(post, labels, per_class=True, classes=list("abcdefg"))
    assert m["top1_accuracy"] == 25.0 and m["top5_accuracy"] == 75.0 and m["images"] == 4
    assert m["per_class_accuracy"]["a"] == 100.0 and m["per_class_accuracy"]["b"] == 0.0
    assert m["per_class_accuracy"]["c"] is None  # no images of class c
    assert per_class_accuracy(post, labels)[:2] == [100.0, 0.0]
    # fewer classes than k: top-5 over 3 classes is always right
    assert topk_errors(torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([0]))["top5_error"] == 0.0


def test_default_test_scales_follow_the_paper():
    assert default_test_scales(256) == [224, 256, 288]
    assert default_test_scales(384) == [352, 384, 416]
    assert default_test_scales([256, 512]) == [256, 384, 512]
    assert default_test_scales(None) == [224, 256, 288]  # unknown S: 256 for 224 crops
    # scales below the crop size are raised to it
    assert default_test_scales(40, crop_size=32) == [32, 40, 72]
