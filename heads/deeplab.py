"""DeepLabv3+ on a frozen encoder.

Inputs are chosen by stride (heads/pyramid.py): ASPP reads a stride-16 map and the decoder a
low-level one at stride 4 (or the finest there is). For a ResNet the stride-16 map is
``block4_os16``, the encoder's last stage run with dilation 2 instead of stride 2 (same frozen
weights, torchvision's ``replace_stride_with_dilation`` geometry). The reference instead trained a
copy of layer4; that would not be a frozen-encoder evaluation. A /16 ViT gives its own grid (and the
low-level map from the head's simple pyramid); other CNNs give their stride-32 map upsampled x2.
ASPP (1x1, atrous 6/12/18, image pooling -> 1x1 to 256 -> BN -> ReLU) is
segmentation-models-pytorch's; the decoder is written here because smp's version uses
separable convs and a fixed x4 upsampling, which breaks on odd input sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from torch import nn

from harness.common.taps import Tap

from .pyramid import Level, PyramidBuilder, deeplab_levels
from .registry import HeadTarget, register_head
from .unet import resize_to

ASPP_RATES = (6, 12, 18)
WIDTH = 256
LOW_WIDTH = 48


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def deeplab_inputs(task: HeadTarget, taps: Mapping[str, Tap]) -> list[Level]:
    low, high = deeplab_levels(taps)
    return [replace(low, role="low-level"), replace(high, role="aspp")]


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, taps: Mapping[str, Tap], num_classes: int):
        super().__init__()
        self.pyramid = PyramidBuilder(deeplab_inputs(None, taps), taps)  # type: ignore[arg-type]
        low, high = self.pyramid.levels
        self.out_stride = low.stride
        self.aspp = ASPP(high.channels, WIDTH, ASPP_RATES, separable=False, dropout=0.0)
        self.low = conv_bn_relu(low.channels, LOW_WIDTH, 1)
        self.fuse = nn.Sequential(conv_bn_relu(WIDTH + LOW_WIDTH, WIDTH, 3), conv_bn_relu(WIDTH, WIDTH, 3))
        self.classifier = nn.Conv2d(WIDTH, num_classes, 1)

    def _aspp(self, x: torch.Tensor) -> torch.Tensor:
        pool_bn = self.aspp.convs[-1][2]
        if self.training and x.shape[0] == 1:
            # The image-pooling branch sees one value per channel; BatchNorm cannot train on that.
            pool_bn.eval()
            try:
                return self.aspp(x)
            finally:
                pool_bn.train()
        return self.aspp(x)

    def forward(self, feats: dict[str, torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        low, high = self.pyramid({t: feats[t].float() for t in self.pyramid.taps})
        x = resize_to(self._aspp(high), low.shape[-2:])
        x = self.fuse(torch.cat([x, self.low(low)], dim=1))
        out = self.classifier(x)
        if size is None:
            size = (round(self.out_stride * low.shape[-2]), round(self.out_stride * low.shape[-1]))
        return resize_to(out, size)


@register_head("deeplabv3plus", inputs=deeplab_inputs,
               description="DeepLabv3+: ASPP on a stride-16 map (ResNets: the dilated last stage) + stride-4 decoder")
def build_deeplab(taps: Mapping[str, Tap], task: HeadTarget) -> DeepLabV3PlusHead:
    return DeepLabV3PlusHead(taps, task.num_outputs)
