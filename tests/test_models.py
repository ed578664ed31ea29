"""Tests of etc_nb.models: registry, ResNet backbones (torchvision compatibility, dilation, pretrained
loading) and PSPNet (output contract, shapes, gradients, parameter counts)."""
import pytest
import torch

from etc_nb.models import count_params, create_model, list_models
from etc_nb.models.mobilenetv2 import mobilenet_v2
from etc_nb.models.pspnet import PSPNet
from etc_nb.models.resnet import load_pretrained, resnet18, resnet50, resnet101


def ceil8(n):
    return -(-n // 8)


def test_registry_names_and_unknown_model():
    assert list_models() == ["bisenetv2", "espnetv2", "fchardnet70", "hrnet_w18s",
                             "pspnet101", "pspnet18", "pspnet50", "pspnet_mbv2"]
    with pytest.raises(ValueError, match="available: bisenetv2, espnetv2, fchardnet70"):
        create_model("unet")


@pytest.mark.parametrize("name", ["pspnet18", "pspnet50", "pspnet101"])
@pytest.mark.parametrize("size", [(64, 64), (57, 75)])
def test_eval_forward_shapes_without_aux(name, size):
    net = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert set(out) == {"logits", "feat"}
    h, w = ceil8(size[0]), ceil8(size[1])
    assert out["logits"].shape == (1, 7, h, w)
    assert out["feat"].shape == (1, net.backbone.channels[-1] // 4, h, w)


@pytest.mark.parametrize("size", [(64, 128), (97, 161)])
def test_pspnet18_train_forward_has_aux(size):
    out = create_model("pspnet18").train()(torch.randn(2, 3, *size))
    h, w = ceil8(size[0]), ceil8(size[1])
    assert out["logits"].shape == out["aux"].shape == (2, 19, h, w)
    assert out["feat"].shape == (2, 128, h, w)


def test_backward_reaches_backbone():
    net = create_model("pspnet18", num_classes=3).train()
    out = net(torch.randn(2, 3, 48, 64))
    (out["logits"].square().mean() + net.aux_weight * out["aux"].square().mean()).backward()
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    assert net.aux_head[0].weight.grad.abs().sum() > 0
    assert net.aux_weight == 0.4


def test_parameter_counts_vs_paper():
    # Table V: PSPNet18 13.2M, PSPNet101 68.1M (19 classes)
    for name, paper in (("pspnet18", 13.2e6), ("pspnet101", 68.1e6)):
        net = create_model(name)
        for n in (count_params(net), count_params(net, inference=False)):
            assert abs(n / paper - 1) < 0.10, (name, n)
    net = create_model("pspnet18")
    assert count_params(net, inference=False) - count_params(net) == count_params(net.aux_head)


def test_backbones_match_torchvision_counts_and_names():
    # torchvision counts minus the 1000-way fc layer
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(resnet18()) == 11_689_512 - 513_000
    assert n(resnet50()) == 25_557_032 - 2_049_000
    assert n(resnet101()) == 44_549_160 - 2_049_000
    keys = resnet50().state_dict()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
            "layer4.2.conv3.weight", "layer4.2.bn3.bias"} <= set(keys)
    assert not any(k.startswith("fc.") for k in keys)


@pytest.mark.parametrize("make", [resnet18, mobilenet_v2])
def test_dilated_is_dense_evaluation_of_strided(make):
    "Output stride 8 by dilation computes the stride-32 trunk's features densely (same weights, subsampled)."
    plain, dilated = make(32).eval(), make(8).eval()
    dilated.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 81, 67)
    with torch.no_grad():
        p, d = plain(x), dilated(x)
    for a, b in ((d[2][..., ::2, ::2], p[2]), (d[3][..., ::4, ::4], p[3])):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-5 * b.abs().max()


def test_pretrained_round_trip(tmp_path):
    src = resnet18().eval()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd.update({"module.fc.weight": torch.randn(1000, 512), "module.fc.bias": torch.randn(1000)})
    torch.save({"model": sd}, tmp_path / "tv.pth")
    dst = load_pretrained(resnet18(), tmp_path / "tv.pth").eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(dst(x)[3], src(x)[3])
    net = create_model("pspnet18", pretrained=tmp_path / "tv.pth").eval()
    with torch.no_grad():
        assert torch.equal(net.backbone(x)[3], src(x)[3])


def test_pretrained_mismatch_lists_keys(tmp_path):
    sd = resnet18().state_dict()
    sd["layer5.0.conv1.weight"] = sd.pop("layer3.0.bn1.weight")
    sd["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        load_pretrained(resnet18(), path)
    msg = str(e.value)
    assert "broken.pth" in msg
    assert "missing keys: layer3.0.bn1.weight" in msg
    assert "unexpected keys: layer5.0.conv1.weight" in msg
    assert "layer1.0.conv2.weight (64, 64, 1, 1) (model (64, 64, 3, 3))" in msg
    with pytest.raises(ValueError, match="broken.pth"):
        create_model("pspnet18", pretrained=path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained(resnet18(), tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_pretrained(resnet18(), tmp_path / "junk.pth")


def test_pspnet_requires_stride8_backbone():
    with pytest.raises(ValueError, match="output stride 8"):
        PSPNet(resnet18(output_stride=16))
