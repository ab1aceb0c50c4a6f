"""Self-supervised pretraining (``harness pretrain``): one module per method, a shared loop in train.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.common.registry import Registry

from .base import Method, MethodConfig
from .byol import BYOL, BYOLConfig
from .exemplar import Exemplar, ExemplarConfig
from .jigsaw import Jigsaw, JigsawConfig
from .moco import MoCo, MoCoConfig, mocov1_config
from .relpatch import RelPatch, RelPatchConfig
from .rotnet import RotNet, RotNetConfig
from .simclr import SimCLR, SimCLRConfig
from .splitbrain import SplitBrain, SplitBrainConfig
from .swav import SwAV, SwAVConfig


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: Callable[[], MethodConfig]  # published defaults
    build: Callable[[MethodConfig, str, int], Method]  # (config, arch, seed) -> method
    description: str


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config: Callable[[], MethodConfig], build: Callable[..., Method],
                    description: str) -> None:
    METHODS.register(name, MethodSpec(name, config, build, description))


register_method("mocov2", MoCoConfig, MoCo, "MoCo v2: momentum encoder, queue of negatives, MLP head, blur")
register_method("mocov1", mocov1_config, MoCo, "MoCo v1: as v2 with a linear head, T 0.07, no blur")
register_method("swav", SwAVConfig, SwAV, "SwAV: online clustering with Sinkhorn-Knopp, multi-crop")
register_method("simclr", SimCLRConfig, SimCLR, "SimCLR: NT-Xent with negatives from every rank")
register_method("byol", BYOLConfig, BYOL, "BYOL: predict a momentum target network, no negatives")
# pretext tasks (Kolesnikov et al. 2019's four, and split-brain autoencoders)
register_method("rotnet", RotNetConfig, RotNet, "RotNet: which of 4 rotations (0/90/180/270) an image was turned by")
register_method("jigsaw", JigsawConfig, Jigsaw, "Jigsaw: which permutation of a maximal-Hamming set shuffled 3x3 tiles")
register_method("relpatch", RelPatchConfig, RelPatch, "Relative patch location: where a neighbour lies (8-way)")
register_method("exemplar", ExemplarConfig, Exemplar,
                "Exemplar: each image a class of augmented copies, with a semi-hard triplet term")
register_method("splitbrain", SplitBrainConfig, SplitBrain,
                "Split-brain autoencoder: L predicts quantised ab, ab predicts quantised L (Lab)")


def get_method(name: str) -> MethodSpec:
    return METHODS[name]


def create_method(name: str, cfg: MethodConfig, arch: str, seed: int) -> Method:
    """Build a method with every initialisation (backbone, heads, prototypes) drawn from ``seed``."""
    spec = get_method(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(cfg, arch, seed)


__all__ = ["METHODS", "MethodSpec", "create_method", "get_method", "register_method"]
