"""DeepLabv3+ on a frozen encoder.

Choice: ASPP reads ``block4_os16``, the encoder's last stage run with dilation 2 instead of
stride 2 (same frozen weights, output stride 16, torchvision's ``replace_stride_with_dilation``
geometry). The reference instead trained a copy of layer4; that would not be a frozen-encoder
evaluation. ASPP (1x1, atrous 6/12/18, image pooling -> 1x1 to 256 -> BN -> ReLU) is
segmentation-models-pytorch's; the decoder is written here because smp's version uses
separable convs and a fixed x4 upsampling, which breaks on odd input sizes.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from torch import nn

from harness.common.taps import DILATED_TAP, Tap

from .registry import HeadTarget, register_head
from .unet import resize_to

LOW_TAP = "block1"
ASPP_RATES = (6, 12, 18)
WIDTH = 256
LOW_WIDTH = 48


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, taps: dict[str, Tap], num_classes: int):
        super().__init__()
        if taps[DILATED_TAP].stride != 16 or taps[LOW_TAP].stride != 4:
            raise ValueError(f"DeepLabv3+ needs {DILATED_TAP} at stride 16 and {LOW_TAP} at stride 4")
        self.aspp = ASPP(taps[DILATED_TAP].channels, WIDTH, ASPP_RATES, separable=False, dropout=0.0)
        self.low = conv_bn_relu(taps[LOW_TAP].channels, LOW_WIDTH, 1)
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
        low = feats[LOW_TAP].float()
        x = resize_to(self._aspp(feats[DILATED_TAP].float()), low.shape[-2:])
        x = self.fuse(torch.cat([x, self.low(low)], dim=1))
        out = self.classifier(x)
        return resize_to(out, size if size is not None else (4 * low.shape[-2], 4 * low.shape[-1]))


@register_head("deeplabv3plus", taps=lambda task: (LOW_TAP, DILATED_TAP),
               description="DeepLabv3+: ASPP on the dilated (OS16) last stage + block1 decoder, frozen encoder")
def build_deeplab(taps: dict[str, Tap], task: HeadTarget) -> DeepLabV3PlusHead:
    return DeepLabV3PlusHead(taps, task.num_outputs)
