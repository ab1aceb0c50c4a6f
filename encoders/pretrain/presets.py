"""Named bundles of settings for ``harness pretrain --preset NAME``. The published ImageNet settings stay every
method's default. ``small`` is the CPU-scale recipe per method (ResNet-18, 64 px, 4,000 synthetic renders, batch
128, 30 epochs (MoCo v1 and v2: 100, SwAV: 70, BYOL: 180, on 32 px views), bf16 autocast). ``learns`` and
README.md say which have been measured to learn (``benchmarks/pretrain_learning.py``, and over seeds
``benchmarks/pretrain_seeds.py``); the others are starting points. The MoCo queues hold
512 keys: a queue of 4,096 covers the whole 4,000-image corpus, so each image's own key from the previous epoch
sits among its negatives. ``amp`` asks for bf16 autocast where it is fast (``train.fast_mixed_precision``); other
CPUs train in float32. Explicit options (``--epochs``, ``--lr``, ...) and ``--set KEY=VALUE`` override a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.common.errors import UsageError


@dataclass(frozen=True)
class Preset:
    settings: dict[str, str] = field(default_factory=dict)  # method settings, as --set KEY=VALUE
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # absolute learning rate (not scaled with the batch)
    limit: int | None = None  # training images
    knn_every: int | None = None
    amp: bool | None = None  # bf16 autocast where fast (CUDA, AMX / AVX512-BF16 CPUs: about 5x); else float32
    note: str = ""
    # measured to gain 5+ kNN points on synth_shape_cls on average over its measured runs (the 4,000 / 2,000 check
    # of benchmarks/results/pretrain_learning.json and pretrain_seeds.json); a recipe that is not is a starting
    # point, and a run with it says so on stderr
    learns: bool = True


# Shared by the small recipes: plain SGD at a high rate with a cosine decay, MoCo v2's crops (0.2-1) and
# jitter (0.4, 0.4, 0.4, 0.1): the published 0.08-1 crops and 0.8 jitter leave little to match at 64 px.
_SMALL_DATA = {"epochs": 30, "batch_size": 128, "limit": 4000, "knn_every": 5, "amp": True}
_SMALL_AUG = {"augment.global_scale": "0.2,1", "augment.jitter": "0.4,0.4,0.4,0.1"}
_SGD = {"optim.name": "sgd", "optim.weight_decay": "1e-4"}

PRESETS: dict[str, dict[str, Preset]] = {
    "small": {
        "simclr": Preset({**_SGD, **_SMALL_AUG, "temperature": "0.2"}, lr=0.5, **_SMALL_DATA,
                         note="SGD 0.5 instead of LARS 0.15, T 0.2, MoCo v2 crops and jitter"),
        # MoCo v2's MLP head (with BN) and cosine rate, but v1's colour jitter (0.4 hue, always applied) and no blur,
        # 100 epochs on 32 px views of the 64 px renders (kNN stays at 64 px), shuffle-BN over 2 sub-batches of 64.
        # With v2's augmentation (jitter hue 0.1 at p 0.8, blur p 0.5) the same recipe gained +4.5 on average over
        # six runs at 150 epochs; MoCo v1 given v2's augmentation fell from +9.7 to +6.4: on these renders the hue
        # invariance is what the instance task has to teach (measured: README.md)
        "mocov2": Preset({**_SGD, "augment.global_scale": "0.2,1", "augment.jitter": "0.4,0.4,0.4,0.4",
                          "augment.jitter_p": "1.0", "augment.blur_p": "0", "queue": "512", "momentum": "0.99",
                          "temperature": "0.2", "head_bn": "true", "augment.global_size": "32", "bn_splits": "2"},
                         lr=0.06, **{**_SMALL_DATA, "epochs": 100},
                         note="queue 512, m 0.99, T 0.2, BN in the MLP head, shuffle-BN as 2 split sub-batches, "
                              "v1's colour jitter and no blur, 32 px views, 100 epochs"),
        # MoCo v1's default schedule is a constant rate (its published step decay falls after epoch 120)
        "mocov1": Preset({**_SGD, "optim.cosine": "true", "queue": "512", "momentum": "0.99", "temperature": "0.2",
                          "augment.global_size": "32"},
                         lr=0.06, **{**_SMALL_DATA, "epochs": 100},
                         note="as mocov2 small with v1's linear head and augmentation, 32 px views, 100 epochs"),
        # eps 0.03 and two crops: the SwAV authors' advice against the uniform fixed point. With eps 0.05 the
        # codes of a random ResNet's near-parallel embeddings are uniform, the prediction learns to be
        # uniform and the loss sits at log(100) with the prototypes still. No queue: one of 1,024 keys from
        # epoch 5 drove the codes onto 7% of the prototypes (z_std 0.05 -> 0.01) within 10 epochs. 32 px
        # views of the 64 px renders (kNN stays at 64 px) make a step 2.6x cheaper, which pays for 70 epochs
        # (measured: README.md).
        "swav": Preset({**_SGD, **_SMALL_AUG, "prototypes": "100", "hidden": "512", "queue": "0",
                        "queue_start_epoch": "5", "freeze_prototypes_epochs": "1", "epsilon": "0.03",
                        "augment.local_crops": "0", "augment.global_size": "32", "optim.final_lr_frac": "0"},
                       lr=0.3, **{**_SMALL_DATA, "epochs": 70},
                       note="eps 0.03, 2 crops of 32 px, 100 prototypes, no queue, prototypes frozen in epoch 1, "
                            "70 epochs"),
        # 180 epochs on 32 px views with the predictor at 10x the rate (Tian et al. 2021), each view through the
        # network on its own so that every BatchNorm sees one view's batch (bn_per_view, as the BYOL authors' code):
        # with both views in one batch the same recipe gained +3.4 over three GPU seeds. 60-120 epochs, a target
        # momentum of 0.9, lightly's rates (0.06, weight decay 5e-4), no blur or 0.08-1 crops stayed within 2 points
        # of the initial kNN. The recipe climbs in the second half of its schedule: +5.1 on average over five CPU
        # seeds on 4,000 / 2,000 (worst +1.6), +4.0 on 8,000 / 4,000, the narrowest pass of the five (README.md)
        "byol": Preset({**_SGD, **_SMALL_AUG, "momentum": "0.99", "hidden": "1024", "augment.global_size": "32",
                        "predictor_lr_mult": "10", "bn_per_view": "true"}, lr=0.5, **{**_SMALL_DATA, "epochs": 180},
                       note="SGD, target momentum 0.99 -> 1, projector/predictor hidden 1,024, predictor at 10x the "
                            "rate, each view batch-normalised on its own, 32 px views, 180 epochs"),
        # Pretext tasks: Kolesnikov et al.'s settings with their 35 epochs cut to 15-30 epochs, 10-20 minutes a run on
        # one core (README.md, "Pretext tasks"). Jigsaw and relative patch location train in float32: on their 16 px
        # tiles CPU bf16 convolution backward returned non-finite gradients within a few steps. Measured over three
        # seeds (benchmarks/results/pretrain_pretext.json): exemplar and RotNet pass the 5-point bar, jigsaw and
        # relative patch location gain 3-4 points, split-brain learns the colour prior only (docs/pretraining-log.md).
        "rotnet": Preset({**_SGD, "augment.global_scale": "0.2,1", "augment.global_size": "32"}, lr=0.1,
                         **_SMALL_DATA,
                         note="4 rotations of 128 images, crops 0.2-1 of 32 px, 30 epochs"),
        "jigsaw": Preset({**_SGD, "perms_per_image": "4", "hidden": "1024"}, lr=0.1,
                         **{**_SMALL_DATA, "epochs": 15, "amp": False}, learns=False,
                         note="100 permutations, 4 puzzles an image, hidden 1,024, 16 px tiles of 64 px views, "
                              "float32, 15 epochs"),
        "relpatch": Preset({**_SGD, "hidden": "1024"}, lr=0.1, **{**_SMALL_DATA, "epochs": 15, "amp": False},
                           learns=False, note="hidden 1,024, 15 px patches of 64 px views, float32, 15 epochs"),
        "exemplar": Preset({**_SGD, "augment.global_crops": "4", "augment.global_scale": "0.2,1",
                            "augment.global_size": "32"}, lr=0.1, **{**_SMALL_DATA, "batch_size": 64, "epochs": 15},
                           note="64 images x 4 copies of 32 px, crops 0.2-1, 15 epochs"),
        "splitbrain": Preset({**_SGD, "augment.global_size": "32"}, lr=0.1, **_SMALL_DATA, learns=False,
                             note="32 px views, 30 epochs"),
    },
}


def get_preset(method: str, name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"--preset {name!r}: known presets: {', '.join(PRESETS)}")
    if method not in PRESETS[name]:
        raise UsageError(f"--preset {name!r} has no recipe for {method!r}; it has {', '.join(PRESETS[name])}")
    return PRESETS[name][method]
