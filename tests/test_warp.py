"Warping and occlusion masks against OpenCV's remap (an independent implementation)."
import cv2
import numpy as np
import pytest
import torch

from etc_nb.warp import fb_consistency_mask, photometric_occlusion, warp


def _cv2_backward_warp(img, flow, interp):
    H, W = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], interp, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("seed", [0, 1])
def test_bilinear_matches_cv2_remap(seed):
    rng = np.random.default_rng(seed)
    img = rng.random((20, 30, 3)).astype(np.float32)
    flow = (rng.standard_normal((20, 30, 2)) * 3).astype(np.float32)
    ref = _cv2_backward_warp(img, flow, cv2.INTER_LINEAR)
    out, valid = warp(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(flow).permute(2, 0, 1)[None])
    out, valid = out[0].permute(1, 2, 0).numpy(), valid[0].numpy()
    # OpenCV's remap quantises sub-pixel positions to 1/32 px; compare inside the frame only
    np.testing.assert_allclose(out[valid], ref[valid], atol=2e-2)


def test_nearest_matches_rounded_indexing_and_keeps_ids():
    rng = np.random.default_rng(2)
    lbl = rng.choice(np.array([0, 5, 13, 255]), size=(2, 17, 23))
    flow = rng.standard_normal((2, 2, 17, 23)).astype(np.float32) * 5
    out, valid = warp(torch.from_numpy(lbl), torch.from_numpy(flow), "nearest")
    for b in range(2):
        ys, xs = np.mgrid[0:17, 0:23]
        xi, yi = np.rint(xs + flow[b, 0]).astype(int), np.rint(ys + flow[b, 1]).astype(int)
        inside = (xi >= 0) & (xi < 23) & (yi >= 0) & (yi < 17)
        np.testing.assert_array_equal(valid[b].numpy(), inside)
        np.testing.assert_array_equal(out[b].numpy()[inside], lbl[b][yi[inside], xi[inside]])
    assert set(np.unique(out.numpy())) <= {0, 5, 13, 255}


def test_integer_shift_is_exact_and_marks_out_of_frame():
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).view(1, 2, 6, 8)
    flow = torch.zeros(1, 2, 6, 8); flow[:, 0] = -2; flow[:, 1] = 1      # sample 2 left, 1 down
    out, valid = warp(x, flow)
    assert torch.equal(out[..., :5, 2:], x[..., 1:, :6])
    assert valid.sum() == 5 * 6 and not valid[0, 5].any() and not valid[0, :, :2].any()


def test_occlusion_masks():
    img = torch.rand(1, 3, 10, 10)
    assert torch.allclose(photometric_occlusion(img, img), torch.ones(1, 10, 10))
    shifted = img + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(photometric_occlusion(img, shifted), torch.full((1, 10, 10), float(np.exp(-0.6))))
    fw = torch.full((1, 2, 10, 10), 1.0)
    assert fb_consistency_mask(fw, -fw)[0, :9, :9].all()             # consistent round trip: visible
    assert not fb_consistency_mask(fw, fw)[0].any()                   # a round trip 2 px off: occluded
