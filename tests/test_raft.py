"""Tests of etc_nb.raft: torchvision state-dict compatibility, weight loading, shapes, the correlation lookup,
agreement with torchvision's RAFT on fixed weights, and the RAFTFlow estimator."""
import hashlib
import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from etc_nb.flow import FlowEstimator
from etc_nb.raft import (RAFT, RAFT_CONFIGS, RAFTFlow, coords_grid, corr_lookup, corr_pyramid, create_raft,
                         upsample_flow)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return create_raft("raft_small")


@pytest.fixture(scope="module")
def large():
    torch.manual_seed(0)
    return create_raft("raft_large")


@pytest.fixture(scope="module")
def est():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return RAFTFlow("raft_small", num_flow_updates=3)


def images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1, torch.rand(b, 3, h, w, generator=g) * 2 - 1


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# --- torchvision compatibility ------------------------------------------------------------------------------

def test_parameter_counts_equal_torchvision(small, large):
    # torchvision's weight metadata: num_params 5257536 (raft_large) and 990162 (raft_small)
    assert n_params(large) == 5_257_536
    assert n_params(small) == 990_162


def signature(state):
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# SHA-256 of the sorted "name shape" lines of torchvision 0.29.1's raft_small() / raft_large() state dicts
TORCHVISION_SIGNATURES = {
    "raft_small": "b52844207e5a43c48b531e21242a63b775b5e556d38eb5545e847e2acf44dd88",
    "raft_large": "23b50731fc53e26ae87cbca92e0532e4098a7c157a2269509c8f819e7860f434",
}


@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_state_dict_names_and_shapes_equal_torchvision(name, small, large):
    sd = {"raft_small": small, "raft_large": large}[name].state_dict()
    assert len(sd) == {"raft_small": 106, "raft_large": 169}[name]
    assert signature(sd) == TORCHVISION_SIGNATURES[name]


SPOT_CHECKS = {   # torchvision's names and shapes, a few per part of each model
    "raft_large": {"feature_encoder.convnormrelu.0.weight": (64, 3, 7, 7),
                   "feature_encoder.layer2.0.downsample.0.weight": (96, 64, 1, 1),
                   "context_encoder.convnormrelu.1.running_var": (64,),
                   "context_encoder.layer3.1.convnormrelu2.1.weight": (128,),
                   "update_block.motion_encoder.convcorr1.0.weight": (256, 324, 1, 1),
                   "update_block.motion_encoder.convflow1.0.weight": (128, 2, 7, 7),
                   "update_block.recurrent_block.convgru1.convz.weight": (128, 384, 1, 5),
                   "update_block.recurrent_block.convgru2.convq.weight": (128, 384, 5, 1),
                   "update_block.flow_head.conv1.weight": (256, 128, 3, 3),
                   "mask_predictor.convrelu.0.weight": (256, 128, 3, 3),
                   "mask_predictor.conv.weight": (576, 256, 1, 1)},
    "raft_small": {"feature_encoder.convnormrelu.0.weight": (32, 3, 7, 7),
                   "feature_encoder.layer1.0.convnormrelu1.0.weight": (8, 32, 1, 1),
                   "context_encoder.conv.weight": (160, 96, 1, 1),
                   "update_block.motion_encoder.convcorr1.0.weight": (96, 196, 1, 1),
                   "update_block.recurrent_block.convgru1.convr.weight": (96, 242, 3, 3),
                   "update_block.flow_head.conv1.weight": (128, 96, 3, 3)}}


def test_spot_check_keys(small, large):
    lg, sm = large.state_dict(), small.state_dict()
    for sd, expected in ((lg, SPOT_CHECKS["raft_large"]), (sm, SPOT_CHECKS["raft_small"])):
        for k, shape in expected.items():
            assert tuple(sd[k].shape) == shape, k
    # instance norm has no state; the small model has no batch norm, no mask predictor, one GRU
    assert not any(k.startswith("feature_encoder.convnormrelu.1") for k in lg)
    assert not any("running" in k for k in sm)
    assert not any(k.startswith(("mask_predictor", "update_block.recurrent_block.convgru2")) for k in sm)


def det_state(state):
    "Deterministic weights for every tensor of `state` from a closed formula (no RNG, so version-independent)."
    out = {}
    for k_i, key in enumerate(sorted(state)):
        t = state[key]
        if not t.is_floating_point():
            out[key] = t.clone()
            continue
        n = t.numel()
        s = torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + 1.3 * k_i)
        if key.endswith("running_var"):
            v = 1 + 0.5 * s * s
        elif key.endswith("running_mean"):
            v = 0.2 * s
        elif t.ndim == 1 and key.endswith("weight"):         # batch-norm scale
            v = 1 + 0.2 * s
        elif t.ndim == 1:                                     # biases
            v = 0.05 * s
        else:                                                 # kernels: uniform-like, variance 1.5 / fan_in
            v = s * math.sqrt(3.0 / (n // t.shape[0]))
        out[key] = v.reshape(t.shape).to(t.dtype)
    return out


def det_images(h, w):
    y = torch.arange(h, dtype=torch.float64).view(h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, w)

    def img(dx, dy):
        xs, ys = x - dx, y - dy
        return torch.stack([torch.sin(0.21 * xs + 0.13 * ys), torch.cos(0.17 * xs - 0.23 * ys),
                            torch.sin(0.015 * xs + 0.11 * ys) * torch.cos(0.09 * xs)]).float()[None]
    return img(0, 0), img(2.5, -1.5)


# torchvision 0.29.1's raft_small / raft_large with det_state weights on det_images(128, 128),
# num_flow_updates=3: last flow at rows 10, 50, 90 and columns 13, 53, 93 (sub-pixel (2, 5) of a cell, so
# that a transposed upsampling mask shows), channel dx then dy, row-major.
TORCHVISION_PROBES = {
    "raft_small": [[-0.66977, -0.7343, -0.64831, -0.84969, -0.81221, -0.73248, -0.7262, -0.70209, -0.78041],
                   [-1.20303, -1.10263, -1.11576, -1.26292, -1.27406, -1.20031, -1.12259, -1.14111, -1.20113]],
    "raft_large": [[-0.65547, -0.65968, -0.64606, -0.7542, -0.69456, -0.69666, -0.74117, -0.68793, -0.67462],
                   [1.07052, 1.22809, 1.21438, 1.71253, 1.89437, 1.88015, 1.69588, 1.88795, 1.87702]],
}


@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_agrees_with_torchvision_on_fixed_weights(name, tmp_path):
    # Through a checkpoint file, as a torchvision checkpoint would come. Rounding noise (thread count, kernels)
    # moves these probes by up to 2e-4 (small) and 1e-5 (large), in torchvision too; swapping the dx/dy order
    # of the correlation window, transposing the convex-upsampling sub-pixels or dropping the mask's 0.25
    # moves them by far more than the tolerances.
    model = create_raft(name)
    torch.save(det_state(model.state_dict()), tmp_path / "det.pth")
    model = create_raft(name, weights=tmp_path / "det.pth")
    a, b = det_images(128, 128)
    with torch.no_grad():
        flow = model(a, b, num_flow_updates=3)[-1]
    probe = flow[0, :, 10::40, 13::40].reshape(2, -1)
    np.testing.assert_allclose(probe.numpy(), TORCHVISION_PROBES[name],
                               atol={"raft_small": 2e-3, "raft_large": 2e-4}[name], rtol=0)


# --- building and loading -----------------------------------------------------------------------------------

def test_unknown_name():
    with pytest.raises(ValueError, match="raft_large.*raft_small"):
        create_raft("raft_medium")
    with pytest.raises(ValueError, match="raft_small"):
        RAFTFlow("raft")


def test_frozen_and_eval(small, large):
    for m in (small, large):
        assert isinstance(m, RAFT) and not m.training
        assert not any(p.requires_grad for p in m.parameters())


def test_random_init_is_deterministic():
    torch.manual_seed(5)
    a = create_raft("raft_small").state_dict()
    torch.manual_seed(5)
    b = create_raft("raft_small").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["update_block.flow_head.conv2.weight"],
                           create_raft("raft_small").state_dict()["update_block.flow_head.conv2.weight"])


def test_round_trip_through_a_file(small, tmp_path):
    torch.save(small.state_dict(), tmp_path / "w.pth")
    loaded = create_raft("raft_small", weights=str(tmp_path / "w.pth"))
    a, b = images(1, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(a, b, 2)[-1], small(a, b, 2)[-1])


def test_checkpoint_without_num_batches_tracked_loads(large, tmp_path):
    sd = {k: v for k, v in large.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.pth")
    loaded = create_raft("raft_large", weights=tmp_path / "w.pth")
    assert torch.equal(loaded.context_encoder.convnormrelu[1].running_var,
                       large.context_encoder.convnormrelu[1].running_var)


def test_renamed_key_is_refused(small, tmp_path):
    sd = dict(small.state_dict())
    sd["update_block.flow_head.conv9.weight"] = sd.pop("update_block.flow_head.conv2.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(ValueError) as e:
        create_raft("raft_small", weights=tmp_path / "renamed.pth")
    msg = str(e.value)
    assert "renamed.pth" in msg
    assert "missing keys: update_block.flow_head.conv2.weight" in msg
    assert "unexpected keys: update_block.flow_head.conv9.weight" in msg


def test_wrong_shape_is_refused(small, tmp_path):
    sd = dict(small.state_dict())
    sd["context_encoder.conv.weight"] = torch.zeros(128, 96, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ValueError) as e:
        create_raft("raft_small", weights=tmp_path / "shape.pth")
    msg = str(e.value)
    assert "shape.pth" in msg and "mis-shaped keys: context_encoder.conv.weight (128, 96, 1, 1)" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_large_checkpoint_into_small_model_is_refused(large, tmp_path):
    torch.save(large.state_dict(), tmp_path / "large.pth")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys.*mis-shaped keys"):
        create_raft("raft_small", weights=tmp_path / "large.pth")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_raft("raft_large", weights=tmp_path / "nope.pth")


# --- forward ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(64, 96), (72, 128)])
def test_forward_shapes(small, h, w):
    a, b = images(2, h, w)
    with torch.no_grad():
        flows = small(a, b, num_flow_updates=5)
        last = small.final_flow(a, b, num_flow_updates=5)
    assert len(flows) == 5
    assert all(f.shape == (2, 2, h, w) and f.dtype == torch.float32 for f in flows)
    assert all(torch.isfinite(f).all() for f in flows)
    torch.testing.assert_close(last, flows[-1])


def test_forward_large(large):
    a, b = images(1, 72, 128)
    with torch.no_grad():
        flows = large(a, b, num_flow_updates=3)
        last = large.final_flow(a, b, num_flow_updates=3)
    assert len(flows) == 3 and {tuple(f.shape) for f in flows} == {(1, 2, 72, 128)}
    torch.testing.assert_close(last, flows[-1])


def test_forward_default_is_12_updates(small):
    a, b = images(1, 64, 64)
    with torch.no_grad():
        assert len(small(a, b)) == 12


def test_batch_equals_single_images(small):
    a, b = images(2, 64, 96)
    with torch.no_grad():
        both = small.final_flow(a, b, 3)
        one = small.final_flow(a[1:], b[1:], 3)
    torch.testing.assert_close(both[1:], one, atol=1e-4, rtol=1e-4)


def test_bad_sizes(small):
    a, b = images(1, 60, 96)
    with pytest.raises(ValueError, match="divisible by 8"):
        small(a, b)
    a, b = images(1, 64, 100)
    with pytest.raises(ValueError, match="divisible by 8"):
        small.final_flow(a, b)
    a, b = images(1, 56, 96)
    with pytest.raises(ValueError, match="at least 64"):
        small(a, b)
    a, b = images(1, 64, 96)
    with pytest.raises(ValueError, match="same|\\(B,3,H,W\\)"):
        small(a, b[..., :88])
    with pytest.raises(ValueError, match="num_flow_updates"):
        small(a, b, num_flow_updates=0)


# --- correlation --------------------------------------------------------------------------------------------

def naive_lookup(pyramid, coords, radius):
    "Loop reference for corr_lookup: explicit bilinear weights, zero outside; channel l*S*S + (dx+r)*S + (dy+r)."
    B, _, h, w = coords.shape
    side = 2 * radius + 1
    out = torch.zeros(B, len(pyramid) * side * side, h, w)
    for b in range(B):
        for y in range(h):
            for x in range(w):
                for lvl, corr in enumerate(pyramid):
                    img = corr[b * h * w + y * w + x, 0]
                    hl, wl = img.shape
                    cx, cy = coords[b, 0, y, x].item() / 2 ** lvl, coords[b, 1, y, x].item() / 2 ** lvl
                    for i in range(side):
                        for j in range(side):
                            px, py = cx + i - radius, cy + j - radius
                            x0, y0 = math.floor(px), math.floor(py)
                            val = 0.0
                            for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                                for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                                    if 0 <= xx < wl and 0 <= yy < hl:
                                        val += wx * wy * img[yy, xx].item()
                            out[b, lvl * side * side + i * side + j, y, x] = val
    return out


def test_corr_pyramid_entries():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(2, 16, 8, 12, generator=g), torch.randn(2, 16, 8, 12, generator=g)
    pyr = corr_pyramid(f1, f2)
    assert [tuple(p.shape) for p in pyr] == [(192, 1, 8, 12), (192, 1, 4, 6), (192, 1, 2, 3), (192, 1, 1, 1)]
    b, y, x, v, u = 1, 5, 7, 2, 9
    torch.testing.assert_close(pyr[0][b * 96 + y * 12 + x, 0, v, u], (f1[b, :, y, x] * f2[b, :, v, u]).sum() / 4)
    torch.testing.assert_close(pyr[3][b * 96 + y * 12 + x, 0, 0, 0], pyr[0][b * 96 + y * 12 + x, 0, :8, :8].mean())


def test_corr_lookup_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(2, 8, 8, 10, generator=g), torch.randn(2, 8, 8, 10, generator=g)
    pyr = corr_pyramid(f1, f2, num_levels=3)
    coords = coords_grid(2, 8, 10) + torch.empty(2, 2, 8, 10).uniform_(-4, 4, generator=g)
    fast = corr_lookup(pyr, coords, radius=2)
    assert fast.shape == (2, 3 * 25, 8, 10)
    torch.testing.assert_close(fast, naive_lookup(pyr, coords, radius=2), atol=1e-5, rtol=1e-5)


def test_zero_flow_on_identical_features_peaks_at_window_centre():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 64, 16, 16, generator=g)
    for r in (3, 4):
        side = 2 * r + 1
        look = corr_lookup(corr_pyramid(f, f), coords_grid(2, 16, 16), r)
        level0 = look[:, :side * side]
        assert (level0.argmax(1) == r * side + r).all()
        # the centre holds the self-correlation |f|^2 / sqrt(C)
        torch.testing.assert_close(level0[:, r * side + r], (f * f).sum(1) / 8)


def test_shifted_features_peak_at_the_shift():
    # content at (x, y) of f1 is at (x + 2, y - 1) in f2: the window peaks at dx = +2, dy = -1
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(1, 64, 16, 16, generator=g)
    f2 = torch.roll(f1, shifts=(-1, 2), dims=(2, 3))
    r, side = 3, 7
    peak = corr_lookup(corr_pyramid(f1, f2), coords_grid(1, 16, 16), r)[:, :side * side].argmax(1)[0, 3:-3, 3:-3]
    assert ((peak // side - r) == 2).all() and ((peak % side - r) == -1).all()
    # starting from the true flow instead, the peak moves to the centre
    coords = coords_grid(1, 16, 16) + torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    peak = corr_lookup(corr_pyramid(f1, f2), coords, r)[:, :side * side].argmax(1)[0, 3:-3, 3:-3]
    assert (peak == r * side + r).all()


def test_coords_grid():
    c = coords_grid(2, 3, 4)
    assert c.shape == (2, 2, 3, 4)
    assert c[1, 0, 2, 3] == 3 and c[1, 1, 2, 3] == 2          # channel 0 is x, channel 1 is y


def test_upsample_flow():
    const = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(1, 2, 5, 6)
    expected = torch.tensor([12.0, -4.0]).view(1, 2, 1, 1).expand(1, 2, 40, 48)
    torch.testing.assert_close(upsample_flow(const), expected)
    up = upsample_flow(const, torch.randn(1, 576, 5, 6))
    torch.testing.assert_close(up[..., 8:-8, 8:-8], expected[..., 8:-8, 8:-8])
    # the mask's channel layout: neighbour k (row-major 3x3), then sub-pixel row, then column
    ramp = torch.randn(1, 2, 5, 6)
    mask = torch.full((1, 9, 8, 8, 5, 6), -1e4)
    mask[:, 5, :, 4:] = 0                                    # right neighbour for the right half of each cell
    mask[:, 4, :, :4] = 0                                    # own value for the left half
    up = upsample_flow(ramp, mask.view(1, 576, 5, 6))
    right = torch.nn.functional.pad(ramp, (0, 1))[..., 1:]  # the right neighbour, zero past the border
    torch.testing.assert_close(up[0, :, 3, 2], 8 * ramp[0, :, 0, 0])
    torch.testing.assert_close(up[0, :, 3, 13], 8 * right[0, :, 0, 1])


# --- RAFTFlow -----------------------------------------------------------------------------------------------

def frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_raftflow_pads_and_crops(est):
    f = frames(2, 60, 90)
    flow = est(f[0], f[1])
    assert isinstance(est, FlowEstimator) and est.name == "raft_small"
    assert flow.shape == (60, 90, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()


def test_raftflow_small_images_are_padded_to_64(est):
    f = frames(2, 40, 48)
    assert est(f[0], f[1]).shape == (40, 48, 2)


def test_flows_batch_equals_compute(est):
    f = frames(3, 60, 90, seed=1)
    batch = torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255
    flows = est.flows(batch[:2], batch[1:])
    assert flows.shape == (2, 2, 60, 90) and flows.dtype == torch.float32 and flows.device == batch.device
    for i in range(2):
        np.testing.assert_allclose(flows[i].permute(1, 2, 0).numpy(), est(f[i], f[i + 1]), atol=1e-4)
    assert not flows.requires_grad


def test_flows_refuses_bad_input(est):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="one shape"):
        est.flows(x, x[..., :32])
    with pytest.raises(ValueError, match="float"):
        est.flows((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        est(np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 3), np.float32))


def test_raftflow_pickles(est):
    f = frames(2, 64, 80, seed=2)
    back = pickle.loads(pickle.dumps(est))
    assert back.name == est.name and back.num_flow_updates == 3
    np.testing.assert_array_equal(back(f[0], f[1]), est(f[0], f[1]))


def test_raftflow_warns_without_weights_only(small, tmp_path):
    with pytest.warns(UserWarning, match="meaningless"):
        RAFTFlow("raft_small")
    torch.save(small.state_dict(), tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = RAFTFlow("raft_small", weights=tmp_path / "w.pth", num_flow_updates=2)
    assert e.weights == str(tmp_path / "w.pth") and "w.pth" in repr(e)
    with pytest.raises(ValueError, match="num_flow_updates"):
        RAFTFlow("raft_small", weights=tmp_path / "w.pth", num_flow_updates=0)


def test_configs_cover_both_sizes():
    assert sorted(RAFT_CONFIGS) == ["raft_large", "raft_small"]


# ---- RAFT wherever a flow goes: the registry, dataset caches, evaluation, training on the device

def test_registered_as_flow_estimator(tmp_path):
    from etc_nb.flow import get_flow_estimator
    torch.manual_seed(0)
    w = tmp_path / "raft_small.pth"
    torch.save(create_raft("raft_small").state_dict(), w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # with weights: no random-weights warning
        got = get_flow_estimator("raft_small", weights=w, num_flow_updates=2)
    assert isinstance(got, RAFTFlow) and got.name == "raft_small" and got.num_flow_updates == 2


def test_dataset_caches_raft_flow_and_evaluate_names_it(est, tmp_path):
    from etc_nb.data import get_dataset
    from etc_nb.data.cityscapes import write_fixture
    from etc_nb.evaluate import evaluate
    from etc_nb.models import create_model
    fix = write_fixture(tmp_path / "fix", size=(32, 48), snippets=1)
    ds = get_dataset("cityscapes", fix, "train", mode="sequence", flow=est, cache_dir=tmp_path / "cache")
    flows = ds.forward_flows(list(ds.snippets)[0])
    assert flows.shape == (6, 2, 32, 48) and torch.isfinite(flows).all()
    assert len(list((tmp_path / "cache" / "raft_small" / "train").rglob("*.png"))) == 6     # compact cache
    torch.manual_seed(0)
    res = evaluate(create_model("pspnet_mbv2").eval(), fix, "train", dataset="cityscapes", flows=(est,), progress=False)
    assert 0 <= res["TC_raft_small"] <= 100


def test_training_computes_raft_flow_on_the_device(tmp_path):
    from etc_nb.config import TrainConfig
    from etc_nb.data.cityscapes import write_fixture
    from etc_nb.loader import training_set
    from etc_nb.train import train
    fix = write_fixture(tmp_path / "fix", size=(32, 48), snippets=2)
    cfg = TrainConfig(dataset="cityscapes", root=str(fix), scheme="tl", flow="raft_small", batch_size=2, crop=(32, 32),
                      steps=2)
    assert "flows" not in training_set(cfg)[0]                  # nothing read or stored: RAFT runs in the step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                        # random RAFT weights
        ck = torch.load(train(cfg, tmp_path / "run", progress=False, workers=0), weights_only=False)
    assert ck["step"] == 2 and np.isfinite(ck["history"][-1]["tl"])
