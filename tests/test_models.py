"""Table 1, Table 2, torchvision equivalence and dense scoring (the foundation)."""

import pytest
import torch
import torchvision
from torch import nn

import vggnet
from vggnet.models import CONFIGS, count_macs, count_parameters, vgg, weight_layers

ALL = ["A", "A-LRN", "B", "B-5x5", "C", "D", "E"]
TINY = dict(width=1 / 16, fc_width=32, crop_size=32)

# Table 2 of the paper, exactly (224x224 input, 1000 classes).
TABLE2 = {
    "A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
    "D": 138_357_544, "E": 143_667_240, "B-5x5": 134_503_528,
}
GMACS = {"A": 7.61, "B": 11.31, "D": 15.47, "E": 19.63}
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def meta_model(name, **kw):
    with torch.device("meta"):
        return vgg(name, **kw)


@pytest.mark.parametrize("name", ALL)
def test_table2_parameter_counts(name):
    assert count_parameters(meta_model(name)) == TABLE2[name]


@pytest.mark.parametrize("name", GMACS)
def test_macs_match_torchvision_figures(name):
    assert round(count_macs(meta_model(name)) / 1e9, 2) == GMACS[name]


def test_macs_are_counted_not_tabled():
    # Doubling the width quadruples the conv MACs of the inner layers: a real count scales.
    small, large = meta_model("D", width=0.5), meta_model("D")
    assert 3.5 < count_macs(large) / count_macs(small) < 4.0
    # dense at 2x the side counts ~4x the conv work
    assert count_macs(large, 448) > 3.9 * count_macs(large)


@pytest.mark.parametrize("name,layers", [("A", 11), ("A-LRN", 11), ("B", 13), ("C", 16), ("D", 16), ("E", 19)])
def test_weight_layers(name, layers):
    assert weight_layers(meta_model(name)) == layers


def test_configs_are_table1_data():
    assert CONFIGS["C"][8] == "conv1-256" and CONFIGS["A-LRN"][1] == "LRN"
    assert sum(s.startswith("conv") for s in CONFIGS["E"]) == 16
    for layers in CONFIGS.values():
        assert layers.count("maxpool") == 5


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_config(name):
    model = vgg(name, num_classes=7, **TINY)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("alias,letter", [("vgg11", "A"), ("vgg13", "B"), ("VGG16", "D"), ("vgg19", "E"), ("a-lrn", "A-LRN")])
def test_aliases(alias, letter):
    assert vgg(alias, **TINY).name == letter


def test_lrn_computes_krizhevskys_equation():
    """A-LRN's LRN layer against Krizhevsky et al. (2012), §3.3, written out:
    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ^ beta,
    n=5, k=2, alpha=1e-4, beta=0.75. Activations of ~100 make the alpha term matter
    (PyTorch's own alpha, which it divides by n, would be off by 5x and fail here)."""
    lrn = vgg("A-LRN", **TINY).features[2]
    assert isinstance(lrn, nn.LocalResponseNorm)
    torch.manual_seed(0)
    a = torch.rand(2, 7, 3, 4, dtype=torch.float64) * 200  # (N, channels, h, w)
    n, k, alpha, beta = 5, 2.0, 1e-4, 0.75
    channels = a.shape[1]
    expected = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        expected[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(dim=1)) ** beta
    got = lrn(a)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    assert (got / a).min() < 0.5  # the normalisation is far from the identity on these values


def test_batch_norm_variant_and_build_args():
    model = vgg("D", num_classes=3, batch_norm=True, **TINY)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    rebuilt = vgg(**model.build_args)
    assert rebuilt.build_args == model.build_args
    assert model.state_dict().keys() == rebuilt.state_dict().keys()


def test_width_scales_channels_and_crop_sets_fc1():
    model = vgg("D", width=0.25, crop_size=64, fc_width=100)
    assert model.features[0].out_channels == 16
    assert model.classifier[0].in_features == 128 * 2 * 2  # 512/4 channels x (64/32)^2
    assert model.feature_info[-1] == {"num_chs": 128, "reduction": 32, "module": "features.30", "stage": 5}


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="F"), "unknown VGG configuration 'F'.*A, A-LRN, B"),
    (dict(name="D", crop_size=100), "crop_size must be a positive multiple of 32.*100"),
    (dict(name="D", crop_size=0), "crop_size must be an integer >= 32, got 0"),
    (dict(name="D", width=0), "width must be a positive number.*0"),
    (dict(name="D", width=-1.0), "width must be a positive number"),
    (dict(name="D", num_classes=0), "num_classes must be an integer >= 1, got 0"),
    (dict(name="D", dropout=1.5), "dropout must be a probability"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vgg(**kwargs)


@pytest.mark.parametrize("letter,bn", [(k, bn) for k in TORCHVISION for bn in (False, True)])
def test_state_dict_matches_torchvision_layout(letter, bn):
    ours = meta_model(letter, batch_norm=bn).state_dict()
    with torch.device("meta"):
        ref = getattr(torchvision.models, TORCHVISION[letter] + ("_bn" if bn else ""))().state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_torchvision_vgg16_weights_give_identical_logits():
    # The cross-check that we implement the reference function: full-size D, batch of 1.
    torch.manual_seed(1)
    ref = torchvision.models.vgg16().eval()
    ours = vgg("D")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-5


def test_torchvision_bn_weights_tiny_logits():
    # BN variant at tiny width: torchvision's builder takes any features stack.
    ours = vgg("B", num_classes=5, batch_norm=True, width=1 / 16, fc_width=4096, crop_size=224).eval()
    ref = torchvision.models.vgg13_bn(num_classes=5)
    ref.features = torchvision.models.vgg.make_layers([4, 4, "M", 8, 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"],
                                                      batch_norm=True)
    ref.classifier[0] = nn.Linear(32 * 49, 4096)
    for m in ref.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["A", "C", "D"])
def test_dense_equals_forward_at_crop_size(name):
    model = vgg(name, num_classes=6, **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        dense = model.dense(x)
        assert dense.shape == (3, 6, 1, 1)
        assert torch.allclose(dense[:, :, 0, 0], model(x), atol=1e-5)


def test_dense_map_size_and_window_equivalence():
    model = vgg("D", num_classes=4, width=1 / 16, fc_width=16, crop_size=64).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        scores = model.dense(x)
        assert scores.shape == (1, 4, 128 // 32 - 1, 96 // 32 - 1)
        # The dense map at (0, 0) sees exactly the top-left crop's receptive grid.
        feat = model.features(x)[:, :, :2, :2]
        top_left = model.classifier(torch.flatten(feat, 1))
        assert torch.allclose(scores[:, :, 0, 0], top_left, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 8, 7, 7), (3, 8, 9, 12), (2, 8, 30, 30)])  # 1, 54, 1152 windows
@pytest.mark.parametrize("bias", [True, False])
def test_fc1_as_a_matrix_product_is_the_convolution(shape, bias, monkeypatch):
    # on a CPU, FC1's k x k convolution over few windows runs as one product over the unfolded windows
    import vggnet.models as models

    g = torch.Generator().manual_seed(sum(shape))
    x, w = torch.randn(*shape, generator=g), torch.randn(5, shape[1], 7, 7, generator=g)
    b = torch.randn(5, generator=g) if bias else None
    conv = torch.nn.functional.conv2d(x, w, b)
    unfolds = []
    real_unfold = models.F.unfold
    monkeypatch.setattr(models.F, "unfold", lambda *a, **k: unfolds.append(1) or real_unfold(*a, **k))
    out = models._window_conv(x, w, b)
    assert out.shape == conv.shape and torch.allclose(out, conv, atol=1e-4, rtol=1e-5)
    windows = shape[0] * (shape[2] - 6) * (shape[3] - 6)
    assert bool(unfolds) == (windows <= models.GEMM_WINDOWS)  # many windows: the convolution itself
    cl = models._window_conv(x.contiguous(memory_format=torch.channels_last), w, b)
    assert torch.allclose(cl, conv, atol=1e-4, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the product as it casts the conv
        low = models._window_conv(x, w, b)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), conv, atol=0.5, rtol=0.05)


def test_dense_maps_are_the_same_whichever_way_fc1_runs(monkeypatch):
    import vggnet.models as models

    model = vgg("D", num_classes=4, width=1 / 16, fc_width=16, crop_size=64).eval()
    x = torch.randn(2, 3, 160, 128)
    with torch.no_grad():
        gemm = model.dense(x)
        monkeypatch.setattr(models, "GEMM_WINDOWS", 0)
        conv = model.dense(x)
    assert torch.allclose(gemm, conv, atol=1e-5)


def test_dense_384_at_224_is_6x6():
    model = vgg("A", num_classes=3, width=1 / 32, fc_width=8)
    with torch.no_grad():
        assert model.eval().dense(torch.randn(1, 3, 384, 384)).shape == (1, 3, 6, 6)


def test_dense_kernels_are_views_of_linear_weights():
    model = vgg("A", num_classes=3, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model.dense(x)
    with torch.no_grad():
        model.classifier[6].bias[1] += 10.0  # change the Linear: the dense form must see it
    after = model.dense(x)
    assert torch.allclose(after[:, 1] - before[:, 1], torch.full_like(after[:, 1], 10.0), atol=1e-4)
    assert torch.allclose(after[:, 0], before[:, 0])


def test_dense_gradients_reach_linear_weights():
    model = vgg("A", num_classes=3, **TINY)
    model.dense(torch.randn(1, 3, 64, 64)).sum().backward()
    assert model.classifier[0].weight.grad is not None and model.classifier[0].weight.grad.abs().sum() > 0


def test_features_map_is_penultimate_after_relu():
    model = vgg("A", num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = model.features_map(x)
        assert fmap.shape == (2, 32, 1, 1)
        assert (fmap >= 0).all()
        # applying the last FC to the descriptor gives the logits
        assert torch.allclose(model.classifier[6](fmap[:, :, 0, 0]), model(x), atol=1e-5)


def test_features_map_is_deterministic_in_train_mode():
    """Dropout (FC1's and FC2's) never touches a descriptor, whether or not the caller called eval()."""
    model = vgg("A", num_classes=3, **{**TINY, "dropout": 0.5})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval().features_map(x)
        model.train()
        assert torch.equal(model.features_map(x), expected) and torch.equal(model.features_map(x), expected)
        assert model.training  # the mode is the caller's, untouched
        assert not torch.equal(model.dense(x), model.dense(x))  # dense() in train mode still drops out


def test_wrong_sizes_give_clear_errors():
    model = vgg("A", **TINY)
    with pytest.raises(ValueError, match=r"classifies 32x32 crops.*got 64x64.*model.dense"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"at least crop_size=32.*got 16x40"):
        model.dense(torch.randn(1, 3, 16, 40))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(3, 32, 32))


def test_package_exports():
    assert vggnet.vgg is vgg and "D" in vggnet.CONFIGS and vggnet.NAMES[-1] == "vgg19"
