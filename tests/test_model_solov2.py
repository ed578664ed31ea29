"""SOLOv2 (etc_nb.models.solov2): Matrix NMS against a direct evaluation of its formula, centre-sampling targets on hand
cases, focal and Dice losses against hand values, training/eval shapes and gradients at two input sizes, parameter
counts against the released files, and the backbone's torchvision state-dict layout (written out independently) with
`load_pretrained` from a local file."""

import math

import pytest
import torch

from etc_nb.models import count_params
from etc_nb.models.solov2 import (LIGHT_SCALE_RANGES, NUM_GRIDS, SCALE_RANGES, dice_loss, mask_targets, matrix_nms,
                                  sigmoid_focal_loss, solov2_light_r18, solov2_loss, solov2_postprocess, solov2_r50,
                                  solov2_targets)

torch.set_num_threads(1)
LOG2 = math.log(2)


# --- torchvision's ResNet layout, from its layer table (independent of etc_nb.models.resnet) ---------------------


def torchvision_resnet_shapes(depth: int) -> dict:
    "Names and shapes of torchvision's `resnet{depth}().state_dict()` (18: BasicBlock 2-2-2-2, 50: Bottleneck 3-4-6-3)."
    def bn(p, c):
        return {**{f"{p}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")},
                f"{p}.num_batches_tracked": ()}
    blocks, expansion = {18: ((2, 2, 2, 2), 1), 50: ((3, 4, 6, 3), 4)}[depth]
    shapes, cin = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}, 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        for b in range(n):
            p, cout = f"layer{stage}.{b}", planes * expansion
            if expansion == 1:
                shapes.update({f"{p}.conv1.weight": (planes, cin, 3, 3), **bn(f"{p}.bn1", planes),
                               f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes)})
            else:
                shapes.update({f"{p}.conv1.weight": (planes, cin, 1, 1), **bn(f"{p}.bn1", planes),
                               f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes),
                               f"{p}.conv3.weight": (cout, planes, 1, 1), **bn(f"{p}.bn3", cout)})
            if b == 0 and (stage > 1 or cin != cout):
                shapes.update({f"{p}.downsample.0.weight": (cout, cin, 1, 1), **bn(f"{p}.downsample.1", cout)})
            cin = cout
    shapes.update({"fc.weight": (1000, cin), "fc.bias": (1000,)})
    return shapes


@pytest.mark.parametrize("make, depth", [(solov2_light_r18, 18), (solov2_r50, 50)])
def test_backbone_has_torchvision_names_and_shapes(make, depth):
    tv = torchvision_resnet_shapes(depth)
    ours = {k.removeprefix("backbone."): tuple(v.shape) for k, v in make(num_classes=3).state_dict().items()
            if k.startswith("backbone.")}
    assert ours == {k: s for k, s in tv.items() if not k.startswith("fc.")}
    assert "layer1.0.conv1.weight" in ours and "layer4.0.downsample.0.weight" in ours


def test_load_pretrained_from_a_torchvision_layout_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                 else torch.rand(s, generator=g) + 0.5) for k, s in torchvision_resnet_shapes(18).items()}
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    net = solov2_light_r18(num_classes=3, pretrained=path)
    sd = net.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(sd[f"backbone.{k}"], v), k
    with pytest.raises(ValueError, match="resnet18-f37072fd.pth"):
        solov2_r50(num_classes=3, pretrained=path)


# --- Matrix NMS ---------------------------------------------------------------------------------------------------


def matrix_nms_direct(masks, labels, scores, kernel, sigma=2.0):
    """decay_j = min over higher-scored i of j's class of f(iou_ij) / f(max_k iou_ki), k higher-scored than i and of
    its class (1 when there is no such i); evaluated pair by pair."""
    f = (lambda v: math.exp(-sigma * v * v)) if kernel == "gaussian" else (lambda v: 1 - v)
    n = len(scores)

    def iou(a, b):
        inter, union = float((masks[a] & masks[b]).sum()), float((masks[a] | masks[b]).sum())
        return inter / union if union else 0.0

    def higher(j):
        return [i for i in range(n) if scores[i] > scores[j] and labels[i] == labels[j]]

    comp = [max([iou(k, i) for k in higher(i)], default=0.0) for i in range(n)]
    # an i equal to a higher mask has linear f = 0: floored at 1e-6 as the implementation does
    return torch.tensor([scores[j] * min([1.0] + [f(iou(i, j)) / max(f(comp[i]), 1e-6) for i in higher(j)])
                         for j in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_nms_matches_its_formula(kernel, seed):
    g = torch.Generator().manual_seed(seed)
    n = 16
    masks = torch.rand(n, 12, 12, generator=g) < torch.rand(n, 1, 1, generator=g) * 0.9
    masks[5] = masks[2]
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    got = matrix_nms(masks, labels, scores, kernel)
    torch.testing.assert_close(got, matrix_nms_direct(masks, labels, scores.tolist(), kernel), rtol=0, atol=1e-9)
    assert (got <= scores + 1e-12).all() and got[scores.argmax()] == scores.max()     # never raised; the best kept
    perm = torch.randperm(n, generator=g)                                              # order of the input is free
    torch.testing.assert_close(matrix_nms(masks[perm], labels[perm], scores[perm], kernel), got[perm])


def test_matrix_nms_hand_values():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True            # 8 pixels
    masks[1, :1] = True            # 4 pixels inside mask 0: iou 0.5
    masks[2, :2] = True            # = mask 0 but of another class: untouched
    got = matrix_nms(masks, torch.tensor([0, 0, 1]), torch.tensor([0.9, 0.8, 0.7]))
    torch.testing.assert_close(got, torch.tensor([0.9, 0.8 * math.exp(-2 * 0.25), 0.7]))
    got = matrix_nms(masks, torch.tensor([0, 0, 1]), torch.tensor([0.9, 0.8, 0.7]), kernel="linear")
    torch.testing.assert_close(got, torch.tensor([0.9, 0.4, 0.7]))


# --- centre-sampling targets --------------------------------------------------------------------------------------


def cells(t):
    return sorted(map(tuple, torch.nonzero(t["labels"] >= 0).tolist()))


def grid_box(rows, cols):
    return sorted((i, j) for i in rows for j in cols)


def test_targets_of_a_square_on_two_levels():
    # 100×100 square, rows 150-249, columns 50-149 of a 400×400 frame: scale 100 in (48, 192) and (96, 384) only;
    # mass centre (199.5, 99.5), sigma-region ±10 px
    masks = torch.zeros(1, 400, 400, dtype=torch.bool)
    masks[0, 150:250, 50:150] = True
    t = solov2_targets(masks, torch.tensor([4]))
    assert [len(cells(x)) for x in t] == [0, 4, 4, 0, 0]
    # S = 36: centre cell (floor(199.5*36/400), floor(99.5*36/400)) = (17, 8); rows 189.5..209.5 -> 17..18, cols 8..9
    assert cells(t[1]) == grid_box(range(17, 19), range(8, 10))
    # S = 24: centre (11, 5); rows 189.5*0.06 = 11.4 .. 12.6, cols 5.4 .. 6.6
    assert cells(t[2]) == grid_box(range(11, 13), range(5, 7))
    for x in t[1:3]:
        assert set(x["labels"][x["labels"] >= 0].tolist()) == {4} and set(x["index"][x["index"] >= 0].tolist()) == {0}
        assert torch.equal(x["labels"] >= 0, x["index"] >= 0)
    # the light models' ranges (448-pixel images): 100 is in (28, 112) and (56, 224), the same levels
    assert [len(cells(x)) for x in solov2_targets(masks, torch.tensor([4]), scale_ranges=LIGHT_SCALE_RANGES)] == \
           [0, 4, 4, 0, 0]


def test_scale_bounds_are_inclusive_and_the_region_is_at_most_3x3():
    masks = torch.zeros(2, 384, 384, dtype=torch.bool)
    masks[0, 0:96, 0:96] = True               # scale 96: the upper bound of level 0, the lower of 2, inside level 1
    masks[1, 12:372, 12:372] = True           # 360 px: sigma-region ±36 px, more than a cell either side on level 2
    t = solov2_targets(masks, torch.tensor([0, 1]))
    assert [set(x["index"][x["index"] >= 0].tolist()) for x in t] == [{0}, {0}, {0, 1}, {1}, set()]
    # instance 1 on S = 24 (16 px cells): centre 191.5 -> cell 11, region 155.5..227.5 -> 9..14, clipped to 10..12
    assert sorted(map(tuple, torch.nonzero(t[2]["index"] == 1).tolist())) == grid_box(range(10, 13), range(10, 13))
    assert set(t[2]["labels"][t[2]["index"] == 1].tolist()) == {1}
    # instance 0 on S = 40 (9.6 px cells): centre 47.5 -> cell 4, region 47.5 ± 9.6 -> 3..5
    assert cells(t[0]) == grid_box(range(3, 6), range(3, 6))


def test_targets_skip_empty_masks_and_check_their_arguments():
    assert all(len(cells(x)) == 0 for x in solov2_targets(torch.zeros(2, 64, 64, dtype=torch.bool), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="labels"):
        solov2_targets(torch.zeros(2, 64, 64, dtype=torch.bool), torch.tensor([0]))


def test_mask_targets_average_4x4_blocks():
    m = torch.zeros(1, 10, 10, dtype=torch.bool)
    m[0, 0:4, 0:4] = True                     # one full block
    m[0, 4:6, 4:8] = True                     # half of block (1, 1): mean 0.5 counts
    m[0, 8:9, 0:4] = True                     # a quarter of block (2, 0) (padded to 12 rows): does not
    small = mask_targets(m, (3, 3))
    assert small[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


# --- losses -------------------------------------------------------------------------------------------------------


def test_focal_loss_hand_values():
    assert math.isclose(sigmoid_focal_loss(torch.zeros(1), torch.ones(1)), 0.25 * 0.25 * LOG2, rel_tol=1e-6)
    assert math.isclose(sigmoid_focal_loss(torch.zeros(1), torch.zeros(1)), 0.75 * 0.25 * LOG2, rel_tol=1e-6)
    x = torch.tensor([1.0])                   # p = sigmoid(1), target 0: 0.75 p^2 log(1 + e)
    p = torch.sigmoid(x)
    assert math.isclose(sigmoid_focal_loss(x, torch.zeros(1)), float(0.75 * p ** 2 * math.log(1 + math.e)), rel_tol=1e-6)
    perfect = sigmoid_focal_loss(torch.tensor([25.0, -25.0, 25.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert 0 <= perfect < 1e-20
    assert sigmoid_focal_loss(torch.tensor([-3.0]), torch.ones(1)) > 0.1


def test_dice_loss_hand_values():
    ones = torch.ones(2, 5, 5)
    torch.testing.assert_close(dice_loss(ones, ones), torch.full((2,), 1 - 50 / 50.002))
    half, target = torch.full((1, 2, 2), 0.5), torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    torch.testing.assert_close(dice_loss(half, target), torch.tensor([1 - 2 / 3.002]))
    assert dice_loss(1 - target, target).item() == pytest.approx(1.0)


def test_solov2_loss_hand_values_and_near_zero_when_right():
    # one 24x24 square of class 1 in a 64x64 frame: level 0 only, 9 positive cells (rows 18-20, columns 16-18)
    sq = torch.zeros(1, 64, 64, dtype=torch.bool)
    sq[0, 20:44, 16:40] = True
    labels = [torch.tensor([1])]
    targets = solov2_targets(sq, labels[0])
    assert cells(targets[0]) == grid_box(range(18, 21), range(16, 19)) and all(not cells(t) for t in targets[1:])
    zeros = {"cls": [torch.zeros(1, 2, S, S) for S in NUM_GRIDS], "kernels": [torch.zeros(1, 4, S, S) for S in NUM_GRIDS],
             "mask_feats": torch.zeros(1, 4, 16, 16)}
    L = solov2_loss(zeros, [sq], labels)
    n = 2 * sum(S * S for S in NUM_GRIDS)
    assert L["cls"].item() == pytest.approx(((n - 9) * 0.75 + 9 * 0.25) * 0.25 * LOG2 / (9 + 1), rel=1e-5)
    assert L["mask"].item() == pytest.approx(3 * (1 - 36 / (64 + 36 + 0.002)), rel=1e-5)
    assert L["loss"].item() == pytest.approx(L["cls"].item() + L["mask"].item())

    onehot = lambda t: torch.nn.functional.one_hot(t.clamp(min=0), 2).permute(2, 0, 1).bool() & (t >= 0)
    right = {"cls": [torch.where(onehot(t["labels"]), 20.0, -20.0)[None] for t in targets],
             "kernels": [torch.zeros(1, 4, S, S) for S in NUM_GRIDS],
             "mask_feats": (mask_targets(sq, (16, 16)) * 40 - 20).expand(4, 16, 16)[None].clone()}
    right["kernels"][0][0, 0][targets[0]["index"] >= 0] = 1.0
    L = solov2_loss(right, [sq], labels)
    assert 0 <= L["loss"] < 1e-3 and L["cls"] < 1e-6
    assert solov2_loss(right, [sq[:0]], [labels[0][:0]])["mask"] == 0          # no instance: no mask term
    with pytest.raises(ValueError, match="class ids in 0..1"):
        solov2_loss(right, [sq], [torch.tensor([2])])
    with pytest.raises(ValueError, match="one entry per image"):
        solov2_loss(right, [sq, sq], labels * 2)


# --- the network --------------------------------------------------------------------------------------------------


def instances(H, W):
    m = torch.zeros(2, 2, H, W, dtype=torch.bool)
    m[0, 0, H // 8:H // 2, W // 8:W // 2] = True
    m[0, 1, H // 2:H - 4, W // 2:W - 4] = True
    m[1, 0, 4:H - 4, 8:W - 8] = True
    m[1, 1, H - 20:H - 10, 4:14] = True
    return list(m), [torch.tensor([0, 2]), torch.tensor([1, 1])]


@pytest.fixture(scope="module")
def light():
    torch.manual_seed(0)
    return solov2_light_r18(num_classes=3)


@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_train_shapes_loss_and_gradients(light, size):
    H, W = size
    net = light.train()
    net.zero_grad(set_to_none=True)
    out = net(torch.randn(2, 3, H, W))
    assert [tuple(c.shape) for c in out["cls"]] == [(2, 3, S, S) for S in NUM_GRIDS]
    assert [tuple(k.shape) for k in out["kernels"]] == [(2, 128, S, S) for S in NUM_GRIDS]
    assert out["mask_feats"].shape == (2, 128, H // 4, W // 4)
    L = net.loss(out, *instances(H, W))
    assert {k: v.shape for k, v in L.items()} == {"loss": (), "cls": (), "mask": ()}
    assert L["cls"] > 0 and L["mask"] > 0 and torch.isfinite(L["loss"])
    L["loss"].backward()
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_eval_returns_instances_per_image(light):
    net = light.eval()
    with torch.no_grad():
        preds = net(torch.randn(2, 3, 61, 83))
    assert len(preds) == 2
    for p in preds:
        assert set(p) == {"masks", "scores", "labels"}
        assert p["masks"].shape[1:] == (61, 83) and p["masks"].shape[0] == p["scores"].shape[0] == p["labels"].shape[0]
    many = net.predict(torch.randn(1, 3, 64, 64), score_thr=0.0, update_thr=0.0, max_per_img=7)[0]   # untrained: low scores
    assert 0 < len(many["scores"]) <= 7 and many["labels"].dtype == torch.int64
    assert (many["scores"][:-1] >= many["scores"][1:]).all() and 0 <= many["masks"].min() <= many["masks"].max() <= 1


def test_r50_raw_output_shapes():
    net = solov2_r50(num_classes=2)
    assert net.output_stride == 4 and net.num_classes == 2 and net.scale_ranges == SCALE_RANGES
    with torch.no_grad():
        out = net.raw(torch.randn(1, 3, 64, 96))
    assert [tuple(k.shape) for k in out["kernels"]] == [(1, 256, S, S) for S in NUM_GRIDS]
    assert out["mask_feats"].shape == (1, 256, 16, 24)


def test_postprocess_keeps_local_maxima_and_decays_a_duplicate():
    feat = torch.full((1, 2, 16, 16), -8.0)
    feat[0, 0, 2:8, 2:8] = feat[0, 1, 9:15, 9:15] = 8
    cls, kern = torch.full((1, 2, 4, 4), -10.0), torch.zeros(1, 2, 4, 4)
    for (i, j), c, logit, ch in (((1, 1), 0, 2.0, 0), ((1, 2), 0, 1.0, 0), ((0, 3), 1, 0.5, 1), ((3, 0), 1, 0.0, 1)):
        cls[0, c, i, j], kern[0, ch, i, j] = logit, 1.0
    res, = solov2_postprocess({"cls": [cls], "kernels": [kern], "mask_feats": feat}, (64, 64), strides=(8,))
    m = torch.sigmoid(torch.tensor(8.0))
    # (1, 2) is below its left neighbour (1, 1): dropped; (3, 0) repeats (0, 3)'s mask: decayed by exp(-2)
    assert res["labels"].tolist() == [0, 1, 1]
    expected = torch.sigmoid(torch.tensor([2.0, 0.5, 0.0])) * torch.tensor([1.0, 1.0, math.exp(-2)]) * m
    torch.testing.assert_close(res["scores"], expected)


def test_parameter_counts_against_the_releases(capsys):
    """The authors' mmdetection-1.x files hold the weights and SGD momentum of the trainable ones (stem and layer1
    frozen): SOLOv2_R50_3x.pth 372 MB, SOLOv2_LIGHT_448_R18_3x.pth 146 MB (Hugging Face xinlongwang/SOLO); an ONNX
    export of SOLOv2-R50 (weights only) is 186 MB (sophgo model-zoo, solov2_r50_1x)."""
    parts = {"backbone": ("backbone.",), "FPN": ("neck.",),
             "category": ("mask_head.cls_convs.", "mask_head.conv_cls."),
             "kernel": ("mask_head.kernel_convs.", "mask_head.conv_kernel."),
             "mask features": ("mask_head.mask_feature_head.",)}
    for make, mb, expected, split in ((solov2_r50, 372, 46_592_912, (23_508_032, 3_344_384, 8_630_352, 9_450_752, 1_659_392)),
                                      (solov2_light_r18, 146, 18_271_760,
                                       (11_176_512, 2_607_104, 1_365_072, 1_480_320, 1_642_752))):
        net = make(num_classes=80)
        counts = {k: sum(p.numel() for n, p in net.named_parameters() if n.startswith(v)) for k, v in parts.items()}
        frozen = sum(p.numel() for n, p in net.backbone.named_parameters() if n.startswith(("conv1", "bn1", "layer1")))
        published = (mb * 1e6 / 4 + frozen) / 2
        with capsys.disabled():
            print(f"\n{make.__name__}: {count_params(net):,} (release {published / 1e6:.2f}M) "
                  + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        assert count_params(net) == expected == sum(counts.values())
        assert tuple(counts.values()) == split
        assert abs(expected / published - 1) < 0.01
        if make is solov2_r50:
            assert abs(expected * 4 / 186e6 - 1) < 0.01
