"""Tests of etc_nb.models.hardnet: the harmonic connection rule, HarDBlock wiring, FC-HarDNet-70's output
contract, shapes, gradients, parameter count and MACs against the official release, export."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from etc_nb.models import count_params, create_model
from etc_nb.models.hardnet import FCHarDNet, HarDBlock, fchardnet70, harmonic_links, harmonic_widths

torch.set_num_threads(1)


def ceil4(n):
    return -(-n // 4)


def test_links_follow_the_harmonic_rule():
    # brute force over all earlier layers j: j is read by k iff k - j = 2**n and 2**n divides k
    powers = [2 ** n for n in range(8)]
    for k in range(1, 100):
        expected = [k - p for p in powers if p <= k and k % p == 0]     # nearest first
        assert harmonic_links(k) == expected, k
    assert all(harmonic_links(k) == [k - 1] for k in range(1, 100, 2))  # odd layers read only their predecessor
    assert all(harmonic_links(2 ** n)[-1] == 0 for n in range(7))       # powers of two reach back to the input
    assert harmonic_links(8) == [7, 6, 4, 0] and harmonic_links(24) == [23, 22, 20, 16]
    with pytest.raises(ValueError, match="numbered from 1"):
        harmonic_links(0)


def test_widths_match_the_official_rounding():
    # the release multiplies by grmul once per extra link, then rounds with int(int(w + 1) / 2) * 2
    def reference(cin, growth, grmul, n):
        out = [cin]
        for k in range(1, n + 1):
            w = growth
            for _ in range(len(harmonic_links(k)) - 1):
                w *= grmul
            out.append(int(int(w + 1) / 2) * 2)
        return out
    for growth in (10, 16, 18, 24, 32):
        for n in (4, 8, 16):
            assert harmonic_widths(40, growth, 1.7, n) == reference(40, growth, 1.7, n)
    assert harmonic_widths(48, 10, 1.7, 4) == [48, 10, 18, 10, 28]      # 17 -> 18, 28.9 -> 28


def test_hardblock_wiring_against_hooks():
    blk = HarDBlock(12, 6, 1.7, 8).eval()
    ins, outs = {}, {}

    def record(k):
        def hook(module, inputs, output):      # returns None: the output is left as it is
            ins[k], outs[k] = inputs[0], output
        return hook
    for k, layer in enumerate(blk.layers, start=1):
        layer.register_forward_hook(record(k))
    x = torch.randn(2, 12, 7, 9)
    with torch.no_grad():
        y = blk(x)
    outs[0] = x
    for k in range(1, 9):
        assert torch.equal(ins[k], torch.cat([outs[j] for j in harmonic_links(k)], 1)), k
    # output: odd layers and the last one (8), never the input or the other even layers
    assert torch.equal(y, torch.cat([outs[k] for k in (1, 3, 5, 7, 8)], 1))
    assert y.shape[1] == blk.out_channels == sum(outs[k].shape[1] for k in (1, 3, 5, 7, 8))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("size", [(64, 128), (97, 161)])
def test_forward_shapes_never_aux(mode, size):
    net = getattr(create_model("fchardnet70", num_classes=7), mode)()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    h, w = ceil4(size[0]), ceil4(size[1])
    assert set(out) == {"logits", "feat"}
    assert out["logits"].shape == (2, 7, h, w)
    assert out["feat"].shape == (2, 48, h, w)
    assert FCHarDNet.output_stride == 4 and FCHarDNet.train_only == () and FCHarDNet.aux_weight == 0


def test_too_small_input_and_pretrained_raise():
    net = fchardnet70(num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 61, 70))["logits"].shape == (1, 3, 16, 18)
    with pytest.raises(ValueError, match="at least 61"):
        net(torch.randn(1, 3, 60, 128))
    with pytest.raises(ValueError, match="no torchvision or timm.*hardnet68.pth"):
        create_model("fchardnet70", pretrained="hardnet68.pth")


def test_backward_reaches_stem():
    net = fchardnet70(num_classes=3).train()
    net(torch.randn(2, 3, 64, 96))["logits"].square().mean().backward()
    assert net.stem[0][0].weight.grad.abs().sum() > 0
    assert net.encoder[-1].layers[-1][0].weight.grad.abs().sum() > 0


def test_parameter_count_and_macs_vs_official_release():
    # official FCHarDNet README (github.com/PingoLH/FCHarDNet), "Results": FC-HarDNet-70 4.1M parameters,
    # 35.4 GMac at 1024x2048. The paper's Table V lists 35.4 under #Params: that is the MAC count.
    net = create_model("fchardnet70")
    n = count_params(net)
    assert n == count_params(net, inference=False) == 4_119_257
    assert abs(n / 4.1e6 - 1) < 0.10
    with torch.device("meta"):
        meta_net = fchardnet70().eval()
        with FlopCounterMode(display=False) as counter:
            meta_net(torch.empty(1, 3, 1024, 2048))
    macs = counter.get_total_flops() / 2          # the counter counts a multiply-accumulate as 2 FLOPs
    assert abs(macs / 35.4e9 - 1) < 0.02, macs
