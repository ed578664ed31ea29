"""HRNet-specific tests (the shared output, gradient, state-dict, parameter-count and ImageNet-loading contract is in
test_model_contract.py): branch sizes, the fusion rule of HighResolutionModule, the backbone against the ImageNet
model's count, checkpoint naming (HRNet-Image-Classification / timm `hrnet_w18_small_v2`), configuration checks."""

import pytest
import torch
import torch.nn.functional as F

from etc_nb.models.hrnet import HRNet, HighResolutionModule

torch.set_num_threads(1)


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


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="blocks"):
        HighResolutionModule((18, 36), (2,))
    with pytest.raises(ValueError, match="expected 2 branch maps"):
        HighResolutionModule((18, 36), (1, 1))([torch.randn(1, 18, 8, 8)])
