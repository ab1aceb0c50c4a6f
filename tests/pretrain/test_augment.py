"""Batch augmentations: multi-crop shapes, seeded reproducibility, and the colour jitter's algebra."""

import torch

from encoders.pretrain.augment import IMAGENET_MEAN, AugmentConfig, BatchColorJitter, MultiCropAugment


def test_multicrop_views_shapes_and_seeded_reproducibility():
    images = (torch.rand(4, 40, 40, 3, generator=torch.Generator().manual_seed(0)) * 255).byte()
    aug = MultiCropAugment(AugmentConfig(global_crops=2, local_crops=3), resolution=32)
    torch.manual_seed(5)
    a = aug(images)
    torch.manual_seed(5)
    b = aug(images)
    assert [tuple(v.shape) for v in a] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3  # 32 * 96/224 -> 16 (min)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])  # two independent draws


def test_identity_settings_give_back_the_normalised_image():
    images = (torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1)) * 255).byte()
    cfg = AugmentConfig(global_crops=1, global_scale=(1.0, 1.0), jitter_p=0, gray_p=0, blur_p=0, flip_p=0)
    out = MultiCropAugment(cfg, 16)(images)[0]
    x = images.permute(0, 3, 1, 2).float() / 255
    expected = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_colour_jitter_algebra():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5
    jit = BatchColorJitter(0.4, 0, 0, 0, p=1.0)
    torch.manual_seed(0)
    y = jit(x)
    ratio = y / x  # brightness only, no clamping below 0.5 * 1.4: one factor per image in [0.6, 1.4]
    per_image = ratio.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert ((per_image[:, 0] >= 0.6) & (per_image[:, 0] <= 1.4)).all()
    hue = BatchColorJitter(0, 0, 0, 0.5, p=1.0)
    torch.testing.assert_close(hue._hue(x, torch.zeros(3)), x, atol=1e-5, rtol=0)  # no shift: identity
    half = torch.full((3,), 0.5)  # two half-turns of the chroma plane: identity
    torch.testing.assert_close(hue._hue(hue._hue(x, half), half), x, atol=1e-5, rtol=0)
    gray = BatchColorJitter._gray(x)
    torch.testing.assert_close(hue._hue(gray.expand(-1, 3, -1, -1), half), gray.expand(-1, 3, -1, -1), atol=1e-5,
                               rtol=0)  # hue leaves grey alone
    off = BatchColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0)
    assert torch.equal(off(x), x)


def test_global_size_resamples_the_crop_to_smaller_views():
    # a vertical ramp, 40 + 10 * row, on a 16 px image; global_size 8 with an identity crop must give the ramp
    # sampled at 8 rows spanning the image (kornia's crop-resize maps corners to corners: row j * 15 / 7)
    ramp = (40 + 10 * torch.arange(16)).to(torch.uint8)
    images = ramp.view(1, 16, 1, 1).expand(2, 16, 16, 3).clone()
    cfg = AugmentConfig(global_crops=2, global_scale=(1.0, 1.0), jitter_p=0, gray_p=0, blur_p=0, flip_p=0,
                        local_crops=1, global_size=8)
    aug = MultiCropAugment(cfg, 16)
    views = aug(images)
    assert [tuple(v.shape) for v in views] == [(2, 3, 8, 8)] * 2 + [(2, 3, 16, 16)]  # locals follow the resolution
    rows = views[0][:, 0] * 0.229 + IMAGENET_MEAN[0]  # un-normalise the red channel
    expected = (40 + 10 * torch.arange(8) * 15 / 7) / 255
    torch.testing.assert_close(rows, expected.view(1, 8, 1).expand(2, 8, 8), atol=1e-4, rtol=0)
    default = MultiCropAugment(AugmentConfig(global_crops=1), 16)(images)[0]
    assert default.shape == (2, 3, 16, 16)  # 0: the run's resolution
