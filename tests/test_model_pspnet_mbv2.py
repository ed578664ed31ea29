"""Tests of PSPNet-MobileNetV2: the MobileNetV2 trunk (torchvision names and shapes, dilation, pretrained
loading) and `pspnet_mbv2` (output contract, shapes, gradients, parameter count, export)."""

import pytest
import torch

from etc_nb.models import count_params, create_model
from etc_nb.models.mobilenetv2 import TORCHVISION_UNUSED, mobilenet_v2
from etc_nb.models.resnet import load_pretrained, resnet18

torch.set_num_threads(1)


def ceil8(n):
    return -(-n // 8)


def torchvision_mobilenet_v2_shapes():
    """Names and shapes of torchvision's `mobilenet_v2().state_dict()` (width 1.0), written out from Table 2 of
    Sandler et al. and torchvision's layer naming, independently of `etc_nb`."""
    def conv_bn(prefix, cout, cin_per_group, k):
        return {f"{prefix}.0.weight": (cout, cin_per_group, k, k),
                **{f"{prefix}.1.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")},
                f"{prefix}.1.num_batches_tracked": ()}
    shapes = conv_bn("features.0", 32, 3, 3)
    cin, i = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, h, j = f"features.{i}.conv", cin * t, 0
            if t != 1:
                shapes.update(conv_bn(f"{p}.0", h, cin, 1))
                j = 1
            shapes.update(conv_bn(f"{p}.{j}", h, 1, 3))                     # depthwise
            shapes[f"{p}.{j + 1}.weight"] = (c, h, 1, 1)                   # linear projection
            shapes.update({f"{p}.{j + 2}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
            shapes[f"{p}.{j + 2}.num_batches_tracked"] = ()
            cin, i = c, i + 1
    shapes.update(conv_bn("features.18", 1280, 320, 1))
    shapes.update({"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)})
    return shapes


TV = torchvision_mobilenet_v2_shapes()


def torchvision_file(tmp_path, trunk, name="mobilenet_v2.pth"):
    "A file laid out like a torchvision checkpoint: `trunk`'s tensors plus random `features.18` and classifier."
    sd = {k: v.clone() for k, v in trunk.state_dict().items()}
    sd.update({k: torch.randn(s) for k, s in TV.items() if k.startswith(TORCHVISION_UNUSED) and s})
    path = tmp_path / name
    torch.save(sd, path)
    return path


def test_trunk_has_torchvision_names_shapes_and_count():
    shapes = {k: tuple(v.shape) for k, v in mobilenet_v2().state_dict().items()}
    assert shapes == {k: s for k, s in TV.items() if not k.startswith(TORCHVISION_UNUSED)}
    # torchvision's mobilenet_v2 has 3,504,872 parameters; the trunk leaves out the classifier and features.18
    n = sum(p.numel() for p in mobilenet_v2().parameters())
    assert n == 3_504_872 - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280) == 1_811_712


@pytest.mark.parametrize("size", [(64, 64), (57, 75)])
def test_eval_forward_shapes_without_aux(size):
    net = create_model("pspnet_mbv2", num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert set(out) == {"logits", "feat"}
    h, w = ceil8(size[0]), ceil8(size[1])
    assert out["logits"].shape == (1, 7, h, w)
    assert out["feat"].shape == (1, 256, h, w)


@pytest.mark.parametrize("size", [(64, 128), (97, 161)])
def test_train_forward_has_aux(size):
    out = create_model("pspnet_mbv2").train()(torch.randn(2, 3, *size))
    h, w = ceil8(size[0]), ceil8(size[1])
    assert set(out) == {"logits", "feat", "aux"}
    assert out["logits"].shape == out["aux"].shape == (2, 19, h, w)
    assert out["feat"].shape == (2, 256, h, w)


def test_contract_attributes_and_stages():
    net = create_model("pspnet_mbv2")
    assert (net.output_stride, net.train_only, net.aux_weight) == (8, ("aux_head",), 0.4)
    assert net.backbone.channels == (24, 32, 96, 320) and net.backbone.reductions == (4, 8, 8, 8)
    assert net.aux_head[0].in_channels == 96 and net.ppm.stages[0][1].in_channels == 320


def test_backward_reaches_first_backbone_conv():
    net = create_model("pspnet_mbv2", num_classes=3).train()
    out = net(torch.randn(2, 3, 48, 64))
    (out["logits"].square().mean() + net.aux_weight * out["aux"].square().mean()).backward()
    assert net.backbone.features[0][0].weight.grad.abs().sum() > 0
    assert net.aux_head[0].weight.grad.abs().sum() > 0


def test_parameter_count_vs_paper():
    # Table V of the paper (per-frame MobileNetV2, i.e. PSPNet on MobileNetV2): 3.2M parameters, 19 classes
    net = create_model("pspnet_mbv2")
    n_inf, n_train = count_params(net), count_params(net, inference=False)
    assert n_inf == 3_394_707 and n_train - n_inf == count_params(net.aux_head)
    for n in (n_inf, n_train):
        assert abs(n / 3.2e6 - 1) < 0.10, n


def test_pretrained_round_trip_with_torchvision_names(tmp_path):
    src = mobilenet_v2().eval()
    path = torchvision_file(tmp_path, src)
    assert set(torch.load(path)) == {k for k, s in TV.items()} - {"features.18.1.num_batches_tracked"}
    net = create_model("pspnet_mbv2", pretrained=path).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(net.backbone(x)[3], src(x)[3])
    assert torch.equal(net.backbone.features[17].conv[3].running_mean, src.features[17].conv[3].running_mean)
    # also wrapped the way training checkpoints are, with DataParallel prefixes
    sd = torch.load(path)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    dst = load_pretrained(mobilenet_v2(), tmp_path / "wrapped.pth", ignore=TORCHVISION_UNUSED).eval()
    with torch.no_grad():
        assert torch.equal(dst(x)[2], src(x)[2])


def test_bad_pretrained_files_raise_naming_the_file(tmp_path):
    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="resnet18.pth.*missing keys: features.0.0.weight"):
        create_model("pspnet_mbv2", pretrained=tmp_path / "resnet18.pth")
    sd = mobilenet_v2().state_dict()
    sd["features.5.conv.1.0.weight"] = torch.zeros(192, 1, 5, 5)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken.pth.*features.5.conv.1.0.weight \(192, 1, 5, 5\)"):
        create_model("pspnet_mbv2", pretrained=tmp_path / "broken.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        create_model("pspnet_mbv2", pretrained=tmp_path / "junk.pth")
