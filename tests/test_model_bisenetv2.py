"""BiSeNetV2-specific tests (the shared output, gradient, state-dict and parameter-count contract, with the booster
strides, is in test_model_contract.py): `feat` and `logits` wiring, the parameter count against an independent count
from the paper's layer table, the refusal message for `pretrained`, layer argument checks."""

import pytest
import torch

from etc_nb.models import count_params, create_model
from etc_nb.models.bisenetv2 import bisenetv2

torch.set_num_threads(1)


def test_feat_is_bga_output_and_logits_its_head():
    net = bisenetv2(num_classes=4).eval()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        out = net(x)
        feat = net.bga(net.detail(x), net.semantic(x)[-1])
        assert torch.equal(out["feat"], feat)
        assert torch.equal(out["logits"], net.head(feat))


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
    assert count_params(net) == inference
    assert count_params(net, inference=False) == inference + boosters
    # mmsegmentation's Cityscapes config (backbone + 1024-wide FCNHead) ends its CE block with conv-BN instead of
    # the paper's plain conv: 128 parameters more, otherwise the same layers
    assert inference + 128 == 3_358_883
    # Published count: the BiSeNetV2 paper (Yu et al. 2021) reports GFLOPs, not parameters; 3.4M is the count quoted
    # for it in later real-time segmentation papers. The "21.2" of Table V (paper-efficient-video-...) in its
    # #Params column is the BiSeNetV2 paper's 21.15 GFLOPs, not a parameter count (the 3.4M check is in the contract).
    assert abs(count_params(net) / 21.2e6 - 1) > 0.5


def test_pretrained_is_refused():
    with pytest.raises(ValueError, match="trained from scratch and has no ImageNet checkpoint"):
        bisenetv2(pretrained="bisenetv2_imagenet.pth")


def test_bad_layer_arguments():
    from etc_nb.models.bisenetv2 import GatherExpansion
    with pytest.raises(ValueError, match="keeps the width"):
        GatherExpansion(16, 32, stride=1)
    with pytest.raises(ValueError, match="stride"):
        GatherExpansion(16, 16, stride=3)
