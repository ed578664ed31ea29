"""PSPNet-MobileNetV2-specific tests (the shared output, gradient, state-dict, parameter-count and ImageNet-loading
contract is in test_model_contract.py; dilation in test_models.py): the trunk's torchvision names, shapes and count,
and the stages feeding the heads."""

import torch

from etc_nb.models import create_model
from etc_nb.models.mobilenetv2 import TORCHVISION_UNUSED, mobilenet_v2

torch.set_num_threads(1)


def torchvision_mobilenet_v2_shapes():
    """Names and shapes of torchvision's `mobilenet_v2().state_dict()` (width 1.0), written out from Table 2 of
    Sandler et al. and torchvision's layer naming, independently of `etc_nb`."""
    def conv_bn(prefix, cout, cin_per_group, k):
        return {f"{prefix}.0.weight": (cout, cin_per_group, k, k),
                **{f"{prefix}.1.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")},
                f"{prefix}.1.num_batches_tracked": ()}
    shapes = conv_bn("features.0", 32, 3, 3)
    cin, i = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            p, h, j = f"features.{i}.conv", cin * t, 0
            if t != 1:
                shapes.update(conv_bn(f"{p}.0", h, cin, 1))
                j = 1
            shapes.update(conv_bn(f"{p}.{j}", h, 1, 3))                     # depthwise
            shapes[f"{p}.{j + 1}.weight"] = (c, h, 1, 1)                   # linear projection
            shapes.update({f"{p}.{j + 2}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})
            shapes[f"{p}.{j + 2}.num_batches_tracked"] = ()
            cin, i = c, i + 1
    shapes.update(conv_bn("features.18", 1280, 320, 1))
    shapes.update({"classifier.1.weight": (1000, 1280), "classifier.1.bias": (1000,)})
    return shapes


TV = torchvision_mobilenet_v2_shapes()


def test_trunk_has_torchvision_names_shapes_and_count():
    shapes = {k: tuple(v.shape) for k, v in mobilenet_v2().state_dict().items()}
    assert shapes == {k: s for k, s in TV.items() if not k.startswith(TORCHVISION_UNUSED)}
    # torchvision's mobilenet_v2 has 3,504,872 parameters; the trunk leaves out the classifier and features.18
    n = sum(p.numel() for p in mobilenet_v2().parameters())
    assert n == 3_504_872 - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280) == 1_811_712


def test_stages_feeding_the_heads():
    net = create_model("pspnet_mbv2")
    assert net.backbone.channels == (24, 32, 96, 320) and net.backbone.reductions == (4, 8, 8, 8)
    assert net.aux_head[0].in_channels == 96 and net.ppm.stages[0][1].in_channels == 320
