"""Tests of etc_nb.models.hrnet: HRNetV2-W18-Small-v2 output contract, shapes at odd sizes, gradients,
the fusion rule of HighResolutionModule, parameter counts against the published ones, ImageNet checkpoint
naming (HRNet-Image-Classification / timm `hrnet_w18_small_v2`) and export."""

import pytest
import torch
import torch.nn.functional as F

from etc_nb.models import count_params, create_model
from etc_nb.models.hrnet import HRNet, HRNetV2, HighResolutionModule, hrnet_w18s

torch.set_num_threads(1)


def ceil4(n):
    return -(-n // 4)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("hrnet_w18s", num_classes=7)


@pytest.mark.parametrize("size", [(64, 96), (57, 75)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_shapes_no_aux(net, size, mode):
    getattr(net, mode)()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert set(out) == {"logits", "feat"}          # HRNetV2 has no auxiliary head, in either mode
    h, w = ceil4(size[0]), ceil4(size[1])
    assert out["logits"].shape == (2, 7, h, w)
    assert out["feat"].shape == (2, 270, h, w)
    net.eval()


def test_contract_attributes():
    assert HRNetV2.output_stride == 4 and HRNetV2.train_only == () and HRNetV2.aux_weight == 0.0
    assert isinstance(create_model("hrnet_w18s"), HRNetV2)


def test_backward_reaches_stem():
    net = hrnet_w18s(num_classes=3).train()
    net(torch.randn(2, 3, 40, 56))["logits"].square().mean().backward()
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    assert net.classifier.weight.grad.abs().sum() > 0


def test_backbone_branch_sizes_odd_input():
    bb = HRNet().eval()
    H, W = 97, 161
    with torch.no_grad():
        ys = bb(torch.randn(1, 3, H, W))
    assert [tuple(y.shape) for y in ys] == [(1, c, -(-H // s), -(-W // s))
                                            for c, s in zip((18, 36, 72, 144), (4, 8, 16, 32))]


def test_fusion_rule_recomputed_by_hand():
    # output i = ReLU(sum_j f_ij(branch_j(x_j))): identity for j == i, 1x1 conv+BN then bilinear resize for
    # coarser j, chain of i-j stride-2 conv+BN for finer j
    torch.manual_seed(1)
    m = HighResolutionModule((4, 6, 8, 10), (1, 1, 1, 1)).eval()
    for p in m.parameters():   # non-trivial BN statistics/affine so a wrong wiring cannot hide
        p.data.uniform_(0.5, 1.5) if p.dim() == 1 else None
    H, W = 21, 19
    xs = [torch.randn(1, c, -(-H // s), -(-W // s)) for c, s in ((4, 1), (6, 2), (8, 4), (10, 8))]
    with torch.no_grad():
        ys = m([x.clone() for x in xs])
        b = [m.branches[j](x) for j, x in enumerate(xs)]
        f = m.fuse_layers
        up = lambda z, ref: F.interpolate(z, size=ref.shape[-2:], mode="bilinear", align_corners=False)
        y0 = F.relu(b[0] + sum(up(f[0][j](b[j]), b[0]) for j in (1, 2, 3)))
        y3 = F.relu(f[3][0](b[0]) + f[3][1](b[1]) + f[3][2](b[2]) + b[3])
    assert torch.allclose(ys[0], y0, atol=1e-5) and torch.allclose(ys[3], y3, atol=1e-5)
    assert [len(f[3][j]) for j in range(3)] == [3, 2, 1]       # one stride-2 conv per factor 2
    assert len(f[3][0][0]) == 3 and len(f[3][0][2]) == 2       # ReLU between steps, none after the last


def test_parameter_count_vs_published():
    # Published: 3.9M for HRNetV2-W18-Small-v2 (HRNet-Semantic-Segmentation README, "Small models": 3.9M params,
    # 71.6 GFLOPs, Cityscapes 19 classes), the count Table V of the paper gives HRNet-w18.
    net = create_model("hrnet_w18s")
    n = count_params(net)
    assert n == 3_939_309
    assert abs(n / 3.9e6 - 1) < 0.10
    assert count_params(net, inference=False) == n      # nothing is training-only


def imagenet_head_params(channels=(18, 36, 72, 144), planes=(32, 64, 128, 256)):
    # HRNet's ImageNet head: a Bottleneck per branch (with projection shortcut), stride-2 3x3 convs (bias) + BN
    # between them, 1x1 conv (bias) + BN to 2048, 1000-way linear
    bottleneck = lambda c, p: c * p + 9 * p * p + 4 * p * p + 4 * c * p + 2 * (p + p + 4 * p + 4 * p)
    incre = sum(bottleneck(c, p) for c, p in zip(channels, planes))
    down = sum(16 * a * b * 9 + 4 * b + 8 * b for a, b in zip(planes, planes[1:]))
    return incre + down + 1024 * 2048 + 2048 + 2 * 2048 + 2048 * 1000 + 1000


def test_backbone_is_imagenet_model_without_head():
    # HRNet-W18-C-Small-v2: 15.6M (HRNet-Image-Classification README), 15,597,464 exactly (osmr/imgclsmob test)
    n = sum(p.numel() for p in HRNet().parameters())
    assert n + imagenet_head_params() == 15_597_464


def test_state_dict_names_follow_hrnet_image_classification():
    sd = HRNet().state_dict()
    expected = {"conv1.weight": (64, 3, 3, 3), "bn1.bias": (64,), "conv2.weight": (64, 64, 3, 3),
                "layer1.0.downsample.1.running_mean": (256,), "layer1.1.conv1.weight": (64, 256, 1, 1),
                "transition1.0.0.weight": (18, 256, 3, 3), "transition1.1.0.0.weight": (36, 256, 3, 3),
                "transition2.2.0.0.weight": (72, 36, 3, 3), "transition3.3.0.1.running_var": (144,),
                "stage2.0.branches.0.1.conv1.weight": (18, 18, 3, 3), "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
                "stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
                "stage3.2.fuse_layers.2.0.0.0.weight": (18, 18, 3, 3), "stage3.2.fuse_layers.2.0.1.1.weight": (72,),
                "stage4.1.fuse_layers.0.3.1.num_batches_tracked": (), "stage4.1.branches.3.1.bn2.weight": (144,)}
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    prefixes = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition1.", "transition2.", "transition3.",
                "stage2.", "stage3.", "stage4.")
    assert all(k.startswith(prefixes) for k in sd)
    # identities (unchanged branches, f_ii) hold nothing; the stage sizes are 1/3/2 modules
    assert not any(k.startswith(("transition2.0.", "transition3.1.", "stage3.0.fuse_layers.1.1.")) for k in sd)
    assert "stage3.2.branches.0.0.conv1.weight" in sd and "stage3.3.branches.0.0.conv1.weight" not in sd
    assert "stage4.1.branches.0.0.conv1.weight" in sd and "stage4.2.branches.0.0.conv1.weight" not in sd
    assert "layer1.1.conv3.weight" in sd and "layer1.2.conv3.weight" not in sd


def timm_checkpoint(backbone):
    sd = dict(backbone.state_dict())
    sd.update({"incre_modules.0.0.conv1.weight": torch.randn(32, 18, 1, 1),
               "downsamp_modules.2.1.running_mean": torch.randn(1024),
               "final_layer.0.weight": torch.randn(2048, 1024, 1, 1), "final_layer.0.bias": torch.randn(2048),
               "classifier.weight": torch.randn(1000, 2048), "classifier.bias": torch.randn(1000)})
    return sd


def test_pretrained_round_trip(tmp_path):
    src = HRNet().eval()      # random convolutions, unlike the fresh model's; perturb BatchNorm too
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.running_var):
                t.data.uniform_(0.5, 1.5)
            for t in (m.bias, m.running_mean):
                t.data.normal_(0, 0.1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_checkpoint(src).items()}}, tmp_path / "w18s.pth")
    net = hrnet_w18s(pretrained=tmp_path / "w18s.pth").eval()
    assert torch.equal(net.backbone.transition3[3][0][0].weight, src.transition3[3][0][0].weight)
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net.backbone(x), src(x)))


def test_pretrained_bad_files_raise(tmp_path):
    sd = timm_checkpoint(HRNet())
    del sd["stage4.1.fuse_layers.3.2.0.0.weight"]
    sd["transition1.0.0.weight"] = torch.zeros(32, 256, 3, 3)     # HRNet-W32's width
    torch.save(sd, tmp_path / "hrnet_w32.pth")
    with pytest.raises(ValueError) as e:
        hrnet_w18s(pretrained=tmp_path / "hrnet_w32.pth")
    msg = str(e.value)
    assert "hrnet_w32.pth" in msg and "missing keys: stage4.1.fuse_layers.3.2.0.0.weight" in msg
    assert "transition1.0.0.weight (32, 256, 3, 3)" in msg
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="resnet.pth"):
        create_model("hrnet_w18s", pretrained=tmp_path / "resnet.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        hrnet_w18s(pretrained=tmp_path / "absent.pth")


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="blocks"):
        HighResolutionModule((18, 36), (2,))
    with pytest.raises(ValueError, match="expected 2 branch maps"):
        HighResolutionModule((18, 36), (1, 1))([torch.randn(1, 18, 8, 8)])
