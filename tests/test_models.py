"""Tests of etc_nb.models: the registry, the ResNet and MobileNetV2 backbones (torchvision counts and names,
dilation), `load_pretrained` and PSPNet's backbone check. What every registered model must do (outputs, stride,
gradients, state dict, parameter counts, ImageNet loading) is in test_model_contract.py."""
import pytest
import torch

from etc_nb.models import create_model, list_models
from etc_nb.models.mobilenetv2 import mobilenet_v2
from etc_nb.models.pspnet import PSPNet
from etc_nb.models.resnet import load_pretrained, resnet18, resnet50, resnet101


def test_registry_names_and_unknown_model():
    assert list_models() == ["bisenetv2", "espnetv2", "fchardnet70", "hrnet_w18s",
                             "pspnet101", "pspnet18", "pspnet50", "pspnet_mbv2"]
    with pytest.raises(ValueError, match="available: bisenetv2, espnetv2, fchardnet70"):
        create_model("unet")


def test_backbones_match_torchvision_counts_and_names():
    # torchvision counts minus the 1000-way fc layer
    n = lambda m: sum(p.numel() for p in m.parameters())
    with torch.device("meta"):
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


def test_load_pretrained_unwraps_and_skips_the_classifier(tmp_path):
    "Also under 'model' (the contract covers 'state_dict' and plain files), `module.` prefixes, fc keys ignored."
    src = resnet18()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd.update({"module.fc.weight": torch.randn(1000, 512), "module.fc.bias": torch.randn(1000)})
    torch.save({"model": sd}, tmp_path / "tv.pth")
    dst = load_pretrained(resnet18(), tmp_path / "tv.pth")
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_load_pretrained_errors_list_keys_and_name_the_file(tmp_path):
    net = resnet18()            # every check fails before anything is copied into it
    sd = dict(net.state_dict())
    sd["layer5.0.conv1.weight"] = sd.pop("layer3.0.bn1.weight")
    sd["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        load_pretrained(net, path)
    msg = str(e.value)
    assert "broken.pth" in msg and "do not fit ResNet" in msg
    assert "missing keys: layer3.0.bn1.weight" in msg
    assert "unexpected keys: layer5.0.conv1.weight" in msg
    assert "layer1.0.conv2.weight (64, 64, 1, 1) (model (64, 64, 3, 3))" in msg
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained(net, tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_pretrained(net, tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*expected a state dict"):
        load_pretrained(net, tmp_path / "list.pth")


def test_pspnet_requires_stride8_backbone():
    with pytest.raises(ValueError, match="output stride 8"):
        PSPNet(resnet18(output_stride=16))
