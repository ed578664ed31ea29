"""The contract every network of `etc_nb.models` keeps, checked for each name `list_models()` returns at collection
time (a newly registered model gets every test here; the ones comparing with `SPEC` fail until it has a row):

- eval: `{logits, feat}` only, logits `(B, num_classes, ceil(H/s), ceil(W/s))` at the model's `output_stride` s for
  odd H, W, `feat` on the same grid; deterministic; each image's output independent of the rest of the batch;
  the modules named in `train_only` are never run, every other module with parameters is;
- train: `aux` exactly for the models with `train_only` heads and `aux_weight > 0` (a tensor or a tuple of them,
  `num_classes` channels); gradients reach every parameter, the convolutions reading the image (the stem) and the
  auxiliary heads;
- inputs below a model's `min_size` raise a `ValueError` naming it, smaller valid inputs keep the stride rule;
- the state dict loads into a fresh instance, which then computes the same outputs;
- `count_params(inference=True)` leaves out exactly the `train_only` modules.

`META_ONLY` models are built on the meta device and run one eval and one train forward pass there: their names, output
keys and shapes, train-only wiring, counts and checkpoint checks are tested; the tests that need values or more passes
are skipped, naming the model that runs them on the same code.

`SPEC` holds what the registry does not: the numbers each model is pinned to (stride, feature width, auxiliary heads,
parameter counts exact and against the published ones, the ImageNet checkpoint its backbone loads, parameters no
forward pass uses)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import pytest
import torch
import torch.nn as nn

from etc_nb.models import count_params, create_model, list_models

torch.set_num_threads(1)

NUM_CLASSES = 5     # not the default 19: the class count must come from the argument


class Spec(NamedTuple):
    stride: int                         # output stride of logits and feat
    feat: int                           # channels of feat
    aux: int | tuple[int, ...] | None   # stride of the `aux` tensor, strides of the `aux` tuple, or no aux head
    aux_weight: float
    train_only: tuple[str, ...]
    params: tuple[int, int]             # count_params(inference=True / False) for 19 classes
    published: float | None             # parameter count the video paper / the release gives, None if none does
    imagenet: dict | None               # keys (and shapes) of the ImageNet checkpoint outside the backbone, which the
                                        # loader must skip; None: `pretrained` is refused (trained from scratch)
    unused: tuple[str, ...] = ()        # modules holding parameters that no forward pass uses


RESNET_FC = lambda c: {"fc.weight": (1000, c), "fc.bias": (1000,)}     # torchvision's classifier

SPEC = {
    # Table V: PSPNet18 13.2M, PSPNet101 68.1M; no published count for PSPNet50 (46.6M at inference)
    "pspnet18": Spec(8, 128, 8, 0.4, ("aux_head",), (12_622_035, 12_770_854), 13.2e6, RESNET_FC(512)),
    "pspnet50": Spec(8, 512, 8, 0.4, ("aux_head",), (46_591_571, 48_956_262), None, RESNET_FC(2048)),
    "pspnet101": Spec(8, 512, 8, 0.4, ("aux_head",), (65_583_699, 67_948_390), 68.1e6, RESNET_FC(2048)),
    # Table V ("MobileNetV2"): 3.2M; the torchvision mobilenet_v2 keys the trunk leaves out
    "pspnet_mbv2": Spec(8, 256, 8, 0.4, ("aux_head",), (3_394_707, 3_415_966), 3.2e6,
                        {"features.18.0.weight": (1280, 320, 1, 1),
                         **{f"features.18.1.{k}": (1280,) for k in ("weight", "bias", "running_mean", "running_var")},
                         "classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)}),
    # HRNet-Semantic-Segmentation README, HRNetV2-W18-Small-v2: 3.9M (Table V's HRNet-w18); the timm /
    # HRNet-Image-Classification head
    "hrnet_w18s": Spec(4, 270, None, 0.0, (), (3_939_309, 3_939_309), 3.9e6,
                       {"incre_modules.0.0.conv1.weight": (32, 18, 1, 1), "downsamp_modules.2.1.running_mean": (1024,),
                        "final_layer.0.weight": (2048, 1024, 1, 1), "final_layer.0.bias": (2048,),
                        "classifier.weight": (1000, 2048), "classifier.bias": (1000,)}),
    # 3.4M, the count later real-time papers quote (the BiSeNetV2 paper gives GFLOPs only; Table V's "21.2" is its
    # 21.15 GFLOPs); four booster heads at strides 4..32, the paper's alpha = 1
    "bisenetv2": Spec(8, 128, (4, 8, 16, 32), 1.0, ("boosters",), (3_358_755, 3_646_063), 3.4e6, None),
    # sacmehta/EdgeNets model zoo, s=2.0 on Cityscapes: 0.79M (Table V's "2.70" is the GFLOPs at 1024x512); the
    # official ImageNet checkpoint's level 5 and classifier. The strided EESP units keep the release's PReLU
    # `module_act` (in its checkpoints and its 0.79M) but return before it.
    "espnetv2": Spec(2, 32, None, 0.0, (), (787_968, 787_968), 0.79e6,
                     {"level5_0.eesp.proj_1x1.conv.weight": (128, 128, 1, 1), "level5.4.conv.weight": (1280, 256, 1, 1),
                      "classifier.weight": (1000, 1280), "classifier.bias": (1000,)},
                     unused=tuple(f"backbone.level{i}_0.eesp.module_act" for i in (2, 3, 4))),
    # official FCHarDNet README: 4.1M (Table V's "35.4" is the GMACs at 1024x2048)
    "fchardnet70": Spec(4, 48, None, 0.0, (), (4_119_257, 4_119_257), 4.1e6, None),
}
PUBLISHED_TOLERANCE = 0.10

# pspnet101 is pspnet50 with 23 instead of 6 Bottlenecks in layer3 (the same classes and code); on the CPU its weights
# and passes took a quarter of this module's run time
META_ONLY = {"pspnet101": "pspnet50"}


def on_meta(model) -> bool:
    return next(model.parameters()).is_meta


def needs_values(name):
    if name in META_ONLY:
        pytest.skip(f"{name} is built on the meta device; {META_ONLY[name]} runs this test on the same code")


def spec_of(name: str) -> Spec:
    if name not in SPEC:
        pytest.fail(f"{name}: registered but has no SPEC row in tests/test_model_contract.py")
    return SPEC[name]


def ceil_div(n: int, s: int) -> int:
    return -(-n // s)


def grid(size, stride):
    return tuple(ceil_div(n, stride) for n in size)


def sizes(model):
    "Odd (H, W) for the eval and the train pass: small, at least the model's `min_size`."
    h = max(getattr(model, "min_size", 1), 29) | 1
    return (h, h + 14), (h + 4, h + 2)


def aux_list(out):
    aux = out["aux"]
    return list(aux) if isinstance(aux, tuple) else [aux]


def module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# one instance per model, shared by its tests (pytest runs all tests of one model before building the next)
@pytest.fixture(scope="module", params=list_models())
def name(request):
    return request.param


@pytest.fixture(scope="module")
def model(name):
    torch.manual_seed(0)
    with torch.device("meta") if name in META_ONLY else nullcontext():
        return create_model(name, num_classes=NUM_CLASSES)


@pytest.fixture(scope="module")
def eval_run(model):
    "Eval-mode outputs for a batch of 2, for each image alone (twice for the first), and the modules that ran."
    size, _ = sizes(model)
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size, device=next(model.parameters()).device)
    ran = set()
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.add(n))
             for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    model.eval()
    singles = again = None
    try:
        with torch.no_grad():
            out = model(x)
            ran_batch = set(ran)
            if not on_meta(model):
                singles = [model(x[i:i + 1]) for i in range(2)]
                again = model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return dict(x=x, size=size, out=out, singles=singles, again=again, ran=ran_batch)


@pytest.fixture(scope="module")
def train_run(model):
    "Train-mode outputs for a batch of 2 and the gradient sums of a loss on logits and every aux output."
    _, size = sizes(model)
    torch.manual_seed(2)
    model.train().zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, *size, device=next(model.parameters()).device))
    grads = None
    if not on_meta(model):
        loss = out["logits"].square().mean()
        if "aux" in out:
            loss = loss + sum(a.square().mean() for a in aux_list(out))
        loss.backward()
        grads = {n: None if p.grad is None else float(p.grad.abs().sum()) for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    model.eval()
    return dict(size=size, out={k: v.detach() if torch.is_tensor(v) else tuple(a.detach() for a in v)
                                for k, v in out.items()}, grads=grads)


def test_spec_covers_the_registry():
    assert sorted(SPEC) == list_models()


# --- eval mode --------------------------------------------------------------------------------------------------


def test_eval_outputs_logits_and_feat_at_output_stride(model, eval_run):
    out, size = eval_run["out"], eval_run["size"]
    assert set(out) == {"logits", "feat"}
    h, w = grid(size, model.output_stride)
    assert out["logits"].shape == (2, NUM_CLASSES, h, w)
    assert out["feat"].dim() == 4 and out["feat"].shape[0] == 2 and out["feat"].shape[-2:] == (h, w)
    assert on_meta(model) or all(torch.isfinite(t).all() for t in out.values())


def test_eval_runs_all_but_the_train_only_modules(name, model, eval_run):
    children = dict(model.named_children())
    assert all(isinstance(children.get(m), nn.Module) for m in model.train_only), model.train_only
    unused = SPEC[name].unused if name in SPEC else ()
    with_params = {module_of(n) for n, _ in model.named_parameters()}
    assert eval_run["ran"] == {m for m in with_params if not under(m, model.train_only) and not under(m, unused)}


def test_eval_is_deterministic(name, eval_run):
    needs_values(name)
    for k in ("logits", "feat"):
        assert torch.equal(eval_run["again"][k], eval_run["singles"][0][k])


def test_eval_images_independent_of_batch(name, eval_run):
    needs_values(name)
    out, singles = eval_run["out"], eval_run["singles"]
    for k in ("logits", "feat"):
        batch, alone = out[k], torch.cat([s[k] for s in singles])
        assert (batch - alone).abs().max() <= 1e-5 * batch.abs().max(), k
    # the two images give different outputs: the check above compares something
    assert not torch.allclose(singles[0]["logits"], singles[1]["logits"])


def test_small_inputs_keep_the_stride_or_raise(name, model):
    needs_values(name)
    min_size = getattr(model, "min_size", 1)       # a model that needs larger inputs says so in `min_size`
    checks = [(9, 11)]
    if min_size > 1:
        checks += [(min_size, min_size + 2), (min_size - 1, 2 * min_size + 1)]
    model.eval()
    for size in checks:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            if min(size) < min_size:
                with pytest.raises(ValueError, match=f"at least {min_size}"):
                    model(x)
            else:
                assert model(x)["logits"].shape == (1, NUM_CLASSES, *grid(size, model.output_stride)), size


# --- train mode -------------------------------------------------------------------------------------------------


def test_train_outputs_aux_only_for_models_with_aux_heads(model, train_run):
    out, size = train_run["out"], train_run["size"]
    has_aux = bool(model.train_only)
    assert (model.aux_weight > 0) == has_aux
    assert set(out) == {"logits", "feat"} | ({"aux"} if has_aux else set())
    assert out["logits"].shape == (2, NUM_CLASSES, *grid(size, model.output_stride))
    assert out["feat"].shape[-2:] == out["logits"].shape[-2:]
    if has_aux:
        assert isinstance(out["aux"], (torch.Tensor, tuple))
        assert all(a.dim() == 4 and a.shape[:2] == (2, NUM_CLASSES) for a in aux_list(out))


def test_gradients_reach_every_parameter(name, model, train_run):
    needs_values(name)
    grads = train_run["grads"]
    unused = SPEC[name].unused if name in SPEC else ()
    assert [n for n, g in grads.items() if g is None and not under(module_of(n), unused)] == []
    assert [n for n, g in grads.items() if g is not None and under(module_of(n), unused)] == []


def test_gradients_reach_the_stem_and_aux_heads(name, model, train_run):
    needs_values(name)
    grads = train_run["grads"]
    stem = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3]
    assert stem, "no convolution reads the image"
    assert all(grads[f"{n}.weight"] > 0 for n in stem), stem
    for head in model.train_only:
        assert sum(g for n, g in grads.items() if under(n, [head]) and g is not None) > 0, head


# --- state dict and parameter counts ----------------------------------------------------------------------------


def test_state_dict_loads_into_fresh_instance(name, model, eval_run):
    needs_values(name)
    model.eval()
    x = eval_run["x"][:1]
    with torch.no_grad():
        ref = model(x)
    with torch.device("meta"):      # no weights of its own: everything it computes with must come from the state dict
        fresh = create_model(name, num_classes=NUM_CLASSES)
    fresh.load_state_dict(model.state_dict(), assign=True)     # strict: the same names and shapes
    assert all(t.device.type == "cpu" for t in [*fresh.parameters(), *fresh.buffers()])
    with torch.no_grad():
        out = fresh.eval()(x)
    assert set(out) == set(ref) and all(torch.equal(out[k], ref[k]) for k in ref)


def test_parameter_counts(name):
    with torch.device("meta"):
        net = create_model(name)
    n_inf, n_train = count_params(net), count_params(net, inference=False)
    assert n_train - n_inf == sum(p.numel() for n, p in net.named_parameters() if under(n, net.train_only))
    spec = spec_of(name)
    assert (n_inf, n_train) == spec.params
    if spec.published is not None:
        assert abs(n_inf / spec.published - 1) < PUBLISHED_TOLERANCE, (n_inf, spec.published)


def test_spec_numbers(name, model, eval_run, train_run):
    spec = spec_of(name)
    assert (model.output_stride, model.aux_weight, tuple(model.train_only)) == (spec.stride, spec.aux_weight,
                                                                               spec.train_only)
    assert eval_run["out"]["feat"].shape[1] == spec.feat
    out, size = train_run["out"], train_run["size"]
    if spec.aux is None:
        assert "aux" not in out
    elif isinstance(spec.aux, int):
        assert torch.is_tensor(out["aux"]) and out["aux"].shape[-2:] == grid(size, spec.aux)
    else:
        assert isinstance(out["aux"], tuple)
        assert [a.shape[-2:] for a in out["aux"]] == [grid(size, s) for s in spec.aux]


# --- pretrained backbones ---------------------------------------------------------------------------------------


def imagenet_checkpoint(model, extras):
    """A checkpoint under the backbone's names (which follow its source library) plus the checkpoint's own head,
    without `num_batches_tracked` (which released checkpoints often lack). Tensor i holds the value i everywhere
    (stored as one number expanded to its shape, so that files stay small even for ResNet-101): loading the wrong
    tensor into a parameter changes its value."""
    shapes = {k: v.shape for k, v in model.backbone.state_dict().items() if v.is_floating_point()}
    shapes.update(extras)
    return {k: torch.tensor(float(i)).expand(s) for i, (k, s) in enumerate(shapes.items(), start=1)}


def test_pretrained_backbone_loads_from_imagenet_checkpoint(name, model, tmp_path):
    spec = spec_of(name)
    path = tmp_path / f"{name}_imagenet.pth"
    if spec.imagenet is None:
        torch.save({}, path)
        with pytest.raises(ValueError, match=path.name):
            create_model(name, pretrained=path)
        return
    needs_values(name)
    sd = imagenet_checkpoint(model, spec.imagenet)
    # the way training scripts save it: under 'state_dict', with DataParallel's `module.` prefixes
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    loaded = create_model(name, num_classes=NUM_CLASSES, pretrained=path).backbone.state_dict()
    assert [k for k in sd if k not in spec.imagenet and not torch.equal(loaded[k], sd[k])] == []


def test_pretrained_files_that_do_not_fit_raise(name, model, tmp_path):
    spec = spec_of(name)
    absent = tmp_path / "absent.pth"
    if spec.imagenet is None:       # refused whatever the file
        with pytest.raises(ValueError, match=absent.name):
            create_model(name, pretrained=absent)
        return
    sd = imagenet_checkpoint(model, spec.imagenet)
    keys = [k for k in sd if k not in spec.imagenet]
    missing, bad = keys[-1], next(k for k in keys if sd[k].dim() == 4)
    del sd[missing]
    sd[bad] = torch.zeros(()).expand(sd[bad].shape[0] + 1, *sd[bad].shape[1:])
    sd["not_a_layer.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "broken.pth")
    # the checks run before any weight is copied: the model is built on the meta device to keep this fast
    with torch.device("meta"):
        with pytest.raises(ValueError) as e:
            create_model(name, pretrained=tmp_path / "broken.pth")
        with pytest.raises(FileNotFoundError, match=absent.name):
            create_model(name, pretrained=absent)
    msg = str(e.value)
    assert "broken.pth" in msg and f"missing keys: {missing}" in msg and "unexpected keys: not_a_layer.weight" in msg
    assert f"{bad} {tuple(sd[bad].shape)}" in msg
