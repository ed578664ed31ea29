"The temporal loss against a direct per-pixel computation, and its invariances."
import numpy as np
import torch
import torch.nn.functional as F

from etc_nb.losses import segmentation_loss, temporal_loss


def test_kl_equals_direct_computation_with_zero_flow():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    flow = torch.zeros(2, 2, 6, 7)
    p, q = a.softmax(1), b.softmax(1)
    direct = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(temporal_loss(a, b, flow), direct, atol=1e-6)
    mse = (a - b).pow(2).mean()
    assert torch.allclose(temporal_loss(a, b, flow, kind="mse"), mse, atol=1e-6)


def test_weighting_by_given_occlusion_and_out_of_frame():
    torch.manual_seed(1)
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    occ = torch.zeros(1, 4, 4); occ[..., :2] = 1
    full = temporal_loss(a, b, torch.zeros(1, 2, 4, 4), kind="mse", occlusion=occ)
    assert torch.allclose(full, ((a - b).pow(2).mean(1) * occ).mean())
    far = torch.full((1, 2, 4, 4), 100.0)                     # every sample leaves the frame
    assert temporal_loss(a, b, far) == 0


def test_stride8_logits_are_upsampled_to_flow_resolution():
    z = torch.randn(1, 5, 4, 4)
    flow = torch.zeros(1, 2, 32, 32)
    assert temporal_loss(z, z, flow) < 1e-6
    assert temporal_loss(z, z + torch.randn_like(z), flow) > 0


def test_segmentation_loss_ignores_255():
    logits = torch.randn(1, 3, 5, 5)
    lbl = torch.randint(0, 3, (1, 5, 5)); lbl[0, :2] = 255
    ref = F.cross_entropy(logits[..., 2:, :], lbl[:, 2:])
    assert torch.allclose(segmentation_loss({"logits": logits}, lbl), ref)
