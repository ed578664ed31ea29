"""FC-HarDNet-specific tests (the shared output, gradient, state-dict and parameter-count contract, with the
`min_size` rule, is in test_model_contract.py): the harmonic connection rule, HarDBlock wiring, the minimum input
size, the refusal message for `pretrained`, MACs against the official release."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from etc_nb.models.hardnet import HarDBlock, fchardnet70, harmonic_links, harmonic_widths

torch.set_num_threads(1)


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


def test_min_size_and_pretrained_refusal():
    # stride-4 stem, then 4 average pools between the 5 encoder blocks (the contract checks smaller inputs raise)
    with torch.device("meta"):
        assert fchardnet70().min_size == 61
    with pytest.raises(ValueError, match="no torchvision or timm.*hardnet68.pth"):
        fchardnet70(pretrained="hardnet68.pth")


def test_macs_vs_official_release():
    # official FCHarDNet README (github.com/PingoLH/FCHarDNet), "Results": FC-HarDNet-70 4.1M parameters (checked in
    # the contract), 35.4 GMac at 1024x2048. The paper's Table V lists 35.4 under #Params: that is the MAC count.
    with torch.device("meta"):
        meta_net = fchardnet70().eval()
        with FlopCounterMode(display=False) as counter:
            meta_net(torch.empty(1, 3, 1024, 2048))
    macs = counter.get_total_flops() / 2          # the counter counts a multiply-accumulate as 2 FLOPs
    assert abs(macs / 35.4e9 - 1) < 0.02, macs
