"""The pretext methods (rotnet, jigsaw, relpatch, exemplar, splitbrain): each updates its weights in a 2-step run and
exports a backbone that `harness eval` loads, and each one's pretext labels are right on hand-made images (pixels
that carry their own coordinates or colours, and CIE Lab computed in float64 by its definition)."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.pretrain import create_method, get_method
from encoders.pretrain.augment import AugmentConfig, MultiCropAugment
from encoders.pretrain.base import make_backbone
from encoders.pretrain.exemplar import batch_instance_logits, exemplar_labels, semihard_triplet_loss
from encoders.pretrain.jigsaw import cut_tiles, hamming_set, min_pairwise_hamming, shuffle_tiles, tile_layout
from encoders.pretrain.pretext import PatchClassifier, preprocess_patches
from encoders.pretrain.relpatch import CENTRE, DIRECTIONS, cut_patches, pair_order, patch_layout
from encoders.pretrain.rotnet import rotate_batch
from encoders.pretrain.splitbrain import ab_bins, lab_split, quantise_ab, quantise_l
from encoders.pretrain.train import PretrainOptions, run_pretrain

ROOT = Path(__file__).resolve().parents[2]
PRETEXT = ("rotnet", "jigsaw", "relpatch", "exemplar", "splitbrain")


def _coordinates(b: int, side: int) -> torch.Tensor:
    """Images (b, 3, side, side) whose channel 0 is the pixel's row and channel 1 its column."""
    rows = torch.arange(side, dtype=torch.float32).view(side, 1).expand(side, side)
    cols = torch.arange(side, dtype=torch.float32).view(1, side).expand(side, side)
    return torch.stack([rows, cols, torch.zeros(side, side)]).expand(b, 3, side, side).clone()


# --- a 2-step run of each method, through the training loop ----------------------------------------------------

@pytest.mark.parametrize("method", PRETEXT)
def test_two_steps_update_the_backbone_and_the_export_loads_in_eval(method, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "weights"))
    res = run_pretrain(PretrainOptions(method=method, preset="small", out=tmp_path, device="cpu", limit=64,
                                       batch_size=32, epochs=1, resolution=32, knn_every=0, amp=False))
    steps = [h for h in res["history"] if "loss" in h]
    assert len(steps) == 1 and np.isfinite(steps[0]["loss"]) and steps[0]["skipped_step"] == 0
    assert 0 <= steps[0]["acc"] <= 1 and 0 <= steps[0]["z_std"] <= 1
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    init, _ = make_backbone("resnet18", 0)
    before = {k: v for k, v in init.state_dict().items() if v.is_floating_point()}
    moved = [k for k, v in before.items() if not torch.equal(v, ckpt["state_dict"][k])]
    weights = [k for k in before if k.endswith("weight")]
    # every layer's weights moved (BatchNorm statistics too), and nothing else is in the export
    assert set(weights) <= set(moved), sorted(set(weights) - set(moved))[:5]
    assert set(ckpt["state_dict"]) == set(init.state_dict())
    from encoders.registry import create_encoder, info_from_meta

    enc = create_encoder(res["checkpoint"])  # strictly into build_arch("resnet18"), as `harness eval` loads it
    assert enc(torch.rand(2, 3, 32, 32), ("embedding",))["embedding"].shape == (2, 512)
    assert info_from_meta("x", "resnet18", ckpt["meta"], "").method != method  # spelled as the report writes it


def test_splitbrain_trains_both_halves_and_keeps_the_l_to_ab_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS", str(tmp_path / "weights"))
    res = run_pretrain(PretrainOptions(method="splitbrain", preset="small", out=tmp_path, device="cpu", limit=64,
                                       batch_size=32, epochs=1, resolution=32, knn_every=0, amp=False))
    state = torch.load(Path(res["run_dir"]) / "last.pt", weights_only=True)["method"]
    exported = torch.load(res["checkpoint"], weights_only=True)["state_dict"]
    init_ab, _ = make_backbone("resnet18", 1_000_003)
    for k, v in init_ab.state_dict().items():
        if k.endswith("weight"):
            assert not torch.equal(v, state[f"ab_net.{k}"]), k
    for k, v in exported.items():
        torch.testing.assert_close(v, state[f"backbone.{k}"], rtol=0, atol=0)


# --- rotnet --------------------------------------------------------------------------------------------------

def test_a_rotated_image_has_its_rotation_label():
    x = torch.zeros(2, 3, 8, 8)
    x[:, 0, 0, 7] = 1.0  # a mark in the top-right corner
    rotated, labels = rotate_batch(x)
    # counter-clockwise quarter turns carry the top-right corner to top-left, bottom-left, bottom-right
    corner = {0: (0, 7), 1: (0, 0), 2: (7, 0), 3: (7, 7)}
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for img, label in zip(rotated, labels.tolist(), strict=True):
        where = divmod(int(img[0].argmax()), 8)
        assert where == corner[label], (label, where)


# --- jigsaw --------------------------------------------------------------------------------------------------

def test_jigsaw_tiles_lie_inside_their_cells_and_a_permutation_is_recovered_from_them():
    side, frac = 63, 64 / 85
    cell, tile = tile_layout(side, frac)
    assert (cell, tile) == (21, 16)  # Kolesnikov et al.'s 64 px tiles of 85 px cells, at 63 px
    torch.manual_seed(0)
    x = _coordinates(4, side)
    tiles = cut_tiles(x, frac)  # (4, 9, 3, 16, 16)
    assert tiles.shape == (4, 9, 3, tile, tile)
    for p in range(9):
        r, c = divmod(p, 3)
        rows, cols = tiles[:, p, 0], tiles[:, p, 1]
        assert rows.min() >= r * cell and rows.max() < (r + 1) * cell
        assert cols.min() >= c * cell and cols.max() < (c + 1) * cell
    offsets = {(int(tiles[b, p, 0].min()) % cell, int(tiles[b, p, 1].min()) % cell) for b in range(4) for p in range(9)}
    assert len(offsets) > 5  # each tile at its own random place in its cell (the gap)
    perms = hamming_set(100)
    for k in (0, 17, 99):
        puzzle = shuffle_tiles(tiles, torch.from_numpy(perms[k].copy()))
        for b in range(4):
            # which cell each puzzle position's tile came from, read off its pixels
            seen = [int(puzzle[b, j, 0].mean() // cell) * 3 + int(puzzle[b, j, 1].mean() // cell) for j in range(9)]
            assert int(np.flatnonzero((perms == seen).all(1))[0]) == k


def test_the_head_shuffling_embeddings_equals_shuffling_the_tiles():
    # each tile is encoded on its own, so one encoding of the tiles serves every permutation of them
    torch.manual_seed(0)
    backbone, width = make_backbone("resnet18", 0)
    head = PatchClassifier(width, 8, 9, 16, 100, 0.5)
    backbone.eval(), head.eval()
    tiles = torch.randn(2, 9, 3, 16, 16)
    perm = torch.from_numpy(hamming_set(100)[42].copy())
    with torch.no_grad():
        emb = backbone(tiles.flatten(0, 1)).view(2, 9, -1)
        by_embeddings = head(emb, perm.expand(2, 1, 9))
        shuffled = backbone(shuffle_tiles(tiles, perm).flatten(0, 1)).view(2, 9, -1)
        by_tiles = head(shuffled, torch.arange(9).expand(2, 1, 9))
    torch.testing.assert_close(by_embeddings, by_tiles, rtol=1e-4, atol=1e-4)


def test_the_permutation_set_has_maximal_hamming_distance():
    perms = hamming_set(100)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms}) == 100
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    # brute force over all pairs, against random sets of the same size
    d = np.array([[int((a != b).sum()) for b in perms] for a in perms])
    assert min_pairwise_hamming(perms) == d[~np.eye(100, dtype=bool)].min() == 6
    rng = np.random.default_rng(0)
    randoms = [min_pairwise_hamming(np.array([rng.permutation(9) for _ in range(100)])) for _ in range(20)]
    assert max(randoms) < 6, randoms
    # greedy farthest-point: each permutation added was at least as far from those before it as any later one
    first = [min(int((perms[i] != perms[j]).sum()) for j in range(i)) for i in range(1, 100)]
    assert all(a >= b for a, b in itertools.pairwise(first))
    assert hamming_set(10).tolist() == perms[:10].tolist()  # the same greedy sequence, cut shorter


# --- relative patch location -----------------------------------------------------------------------------------

def test_patch_layout_is_doersch_geometry():
    assert patch_layout(398, 0.5, 7 / 96) == (96, 144, 7)  # 96 px patches, 48 px gaps, jitter 7 px (Doersch et al.)
    assert patch_layout(64, 0.5, 7 / 96) == (15, 23, 1)


def test_a_relative_patch_pair_has_the_right_class():
    torch.manual_seed(0)
    side = 64
    patch, pitch, jit = patch_layout(side, 0.5, 7 / 96)
    patches = cut_patches(_coordinates(8, side), 0.5, 7 / 96)
    assert patches.shape == (8, 9, 3, patch, patch)
    order, labels = pair_order(8)
    assert labels.tolist() == list(range(8)) * 8
    centres = patches[:, :, :2].mean((-1, -2))  # (8, 9, 2): each patch's centre (row, column) in the image
    for b in range(8):
        for k in range(8):
            neighbour, centre = order[b, k].tolist()
            assert centre == CENTRE
            step = centres[b, neighbour] - centres[b, centre]
            want = torch.tensor(DIRECTIONS[labels[b * 8 + k]], dtype=torch.float32)
            # the label's direction, the patches a pitch apart give or take both jitters
            assert torch.all((step - want * pitch).abs() <= 2 * jit), (k, step)
    # the class names: 0 up-left, 1 up, 2 up-right, 3 left, 4 right, 5 down-left, 6 down, 7 down-right
    assert DIRECTIONS == ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def test_patch_preprocessing_greys_and_standardises_each_patch_on_its_own():
    torch.manual_seed(0)
    p = torch.randn(64, 2, 3, 8, 8)
    out = preprocess_patches(p, 1.0, True).double()
    assert torch.allclose(out.mean((-1, -2, -3)), torch.zeros(64, 2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(out.std((-1, -2, -3), correction=0), torch.ones(64, 2, dtype=torch.float64), atol=1e-4)
    assert torch.equal(out[:, :, 0], out[:, :, 1]) and torch.equal(out[:, :, 1], out[:, :, 2])  # grey
    grey = (preprocess_patches(p, 0.5, False) - p).abs().amax((-1, -2, -3)) > 1e-5
    assert 0.3 < grey.float().mean() < 0.7  # about half the patches turned grey, each on its own draw


# --- exemplar ------------------------------------------------------------------------------------------------

def test_exemplar_copies_of_one_image_share_a_label():
    # eight images of one flat colour each, four copies each through the view pipeline (crops, flips: colour kept)
    colours = torch.tensor([[i * 30, 255 - i * 30, (i * 70) % 256] for i in range(8)], dtype=torch.uint8)
    images = colours.view(8, 1, 1, 3).expand(8, 32, 32, 3).contiguous()
    cfg = AugmentConfig(global_crops=4, global_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    views = MultiCropAugment(cfg, 32)(images)
    x = torch.cat(views)
    labels = exemplar_labels(8, 4)
    mean_colour = x.mean((2, 3))
    for i, j in itertools.combinations(range(32), 2):
        same_colour = torch.allclose(mean_colour[i], mean_colour[j], atol=1e-4)
        assert same_colour == bool(labels[i] == labels[j]), (i, j)


def test_semihard_triplet_loss_matches_a_brute_force_reference():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1)
    labels = exemplar_labels(4, 3)
    d = torch.cdist(z, z) ** 2
    losses = []
    for a in range(12):
        for p in range(12):
            if p == a or labels[p] != labels[a]:
                continue
            negs = [d[a, n] for n in range(12) if labels[n] != labels[a]]
            farther = [v for v in negs if v > d[a, p]]
            dn = min(farther) if farther else max(negs)
            losses.append(max(float(d[a, p] - dn + 0.5), 0.0))
    assert float(semihard_triplet_loss(z, labels, 0.5)) == pytest.approx(sum(losses) / len(losses), abs=1e-12)


def test_batch_instance_logits_use_each_images_copies_without_the_copy_itself():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(9, 4, dtype=torch.float64), dim=1)
    labels = exemplar_labels(3, 3)
    got = batch_instance_logits(z, labels, 3, 0.5)
    for i in range(9):
        for j in range(3):
            members = [m for m in range(9) if labels[m] == j and m != i]
            proto = torch.nn.functional.normalize(z[members].sum(0), dim=0)
            assert float(got[i, j]) == pytest.approx(float(z[i] @ proto) / 0.5, abs=1e-12)


# --- split-brain ---------------------------------------------------------------------------------------------

def _lab64(rgb: tuple[float, float, float]) -> np.ndarray:
    """CIE Lab of an sRGB colour in float64, from the definitions (sRGB -> linear -> XYZ, D65 white)."""
    c = np.array(rgb, dtype=np.float64)
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    xyz = m @ lin / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize(("rgb", "ab_bin", "l_bin"), [
    ((1.0, 0.0, 0.0), (80, 70), 26),  # red: Lab (53.2, 80.1, 67.2)
    ((0.0, 0.0, 1.0), (80, -110), 16),  # blue: Lab (32.3, 79.2, -107.9)
    ((0.0, 1.0, 0.0), (-90, 80), 43),  # green: Lab (87.7, -86.2, 83.2)
    ((1.0, 1.0, 1.0), (0, 0), 49),  # white: L 100 in the last bin
    ((0.5, 0.5, 0.5), (0, 0), 26),  # mid grey: L 53.4
    ((0.0, 0.0, 0.0), (0, 0), 0),
])
def test_lab_quantisation_bins_of_known_colours(rgb, ab_bin, l_bin):
    ref = _lab64(rgb)
    assert round(ref[1] / 10) * 10 == ab_bin[0] and round(ref[2] / 10) * 10 == ab_bin[1]  # by hand
    assert int(ref[0] // 2) == min(l_bin, 49) or ref[0] >= 98
    bins = ab_bins(10)
    img = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    lab, grey, chroma = lab_split(img)
    np.testing.assert_allclose(lab[0, :, 0, 0].double().numpy(), ref, atol=0.05)
    assert bins[quantise_ab(lab[:, 1:], bins)[0, 0, 0]].tolist() == list(ab_bin)
    assert int(quantise_l(lab[:, :1], 50)[0, 0, 0]) == l_bin


def test_ab_bins_cover_the_srgb_gamut_on_a_grid_of_ten():
    bins = ab_bins(10)
    assert len(bins) == 261 and torch.all(bins % 10 == 0)
    torch.manual_seed(0)
    lab, _, _ = lab_split(torch.rand(1, 3, 64, 64))
    near = bins[quantise_ab(lab[:, 1:], bins)]  # (1, 64, 64, 2)
    assert (near - lab[:, 1:].permute(0, 2, 3, 1)).abs().max() <= 5 + 1e-3  # every colour's own cell is a bin


def test_the_l_network_sees_a_grey_image_of_the_same_lightness():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 8, 8)
    lab, grey, chroma = lab_split(rgb)
    from encoders.pretrain.pretext import to_unit

    unit = to_unit(grey)
    torch.testing.assert_close(unit[:, 0], unit[:, 1], atol=1e-4, rtol=0)  # through the normalisation and back
    torch.testing.assert_close(unit[:, 1], unit[:, 2], atol=1e-4, rtol=0)
    import kornia

    torch.testing.assert_close(kornia.color.rgb_to_lab(unit)[:, 0], lab[:, 0], atol=0.05, rtol=0)
    torch.testing.assert_close(chroma[:, 1:] * 100, lab[:, 1:])
    assert torch.all(chroma[:, 0] == 0)


# --- the published defaults and the command line -----------------------------------------------------------------

def test_defaults_are_the_published_settings():
    rot, jig, rel, ex = (get_method(m).config() for m in ("rotnet", "jigsaw", "relpatch", "exemplar"))
    for cfg in (rot, jig, rel, ex):
        assert (cfg.epochs, cfg.optim.lr, cfg.optim.lr_batch, cfg.optim.warmup_epochs) == (35, 0.1, 256, 5)
        assert cfg.optim.name == "sgd" and cfg.optim.weight_decay == 1e-4
    assert rot.batch_size == 64 and jig.batch_size == rel.batch_size == 128 and ex.batch_size == 64
    assert jig.permutations == 100 and jig.gray_p == rel.gray_p == 0.66 and jig.hidden == 4096
    assert ex.augment.global_crops == 8 and ex.margin == 0.5 and ex.embed_dim == 1000
    sb = get_method("splitbrain").config()
    assert (sb.ab_grid, sb.l_bins) == (10.0, 50)
    m = create_method("jigsaw", jig, "resnet18", 0)
    assert m.head.embed.in_features == 512 and m.head.fc[-1].out_features == 100


def test_cli_pretrain_rotnet_then_eval_accepts_the_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "HARNESS_WEIGHTS": str(tmp_path / "w")}

    def harness(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)

    pre = harness("pretrain", "--method", "rotnet", "--preset", "small", "--epochs", "1", "--limit", "64",
                  "--batch-size", "32", "--knn-every", "0", "--device", "cpu", "--out", str(tmp_path / "runs"),
                  "--name", "rot_run", "--json")
    assert pre.returncode == 0, pre.stderr[-2000:]
    assert json.loads(pre.stdout)["method"] == "rotnet"
    ev = harness("eval", "--encoder", "rot_run", "--task", "synth_count", "--limit", "64", "--epochs", "1",
                 "--grid", "single", "--device", "cpu", "--out", str(tmp_path / "out"), "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    rec = json.loads(ev.stdout)
    assert rec["encoder"] == "rot_run" and rec["task"] == "synth_count" and 0 <= rec["test"] <= 1
    assert rec["encoder_info"]["method"] == "RotNet" and rec["encoder_info"]["arch"] == "resnet18"


# --- the learning benchmark's summary ----------------------------------------------------------------------------

def test_benchmark_summary_statistics_match_numpy(load_benchmark):
    bench = load_benchmark("pretrain_pretext")

    def record(method, seed, knn, linear):
        return {"method": method, "seed": seed, "name": f"{method}_s{seed}", "device": "cpu", "epochs": 30,
                "steps": 930, "train_s": 60.0 * (seed + 1), "gain_points": knn - 1, "note": "recipe",
                "checks": [{"bank": 4000, "queries": 2000, "init": 0.3, "final": 0.3 + knn / 100, "gain_points": knn}],
                "linear": {"bank": 2000, "queries": 500, "init": {"linear_shape_cls": 0.3},
                           "final": {"linear_shape_cls": 0.3 + linear / 100}, "gain_points": linear},
                "pretext_acc": 0.9}

    data = {"rotnet": [(6.5, 9.0), (2.0, 4.5), (7.1, 8.0)], "splitbrain": [(-1.0, 0.5), (0.4, -2.0)]}
    recs = [record(m, s, k, lin) for m, runs in data.items() for s, (k, lin) in enumerate(runs)]
    summary = bench.summarise(recs[::-1])
    assert list(summary) == ["rotnet", "splitbrain"]  # the methods' order, not the records'
    for m, runs in data.items():
        knn, lin = (np.array([r[i] for r in runs], dtype=np.float64) for i in (0, 1))
        c, p = summary[m]["checks"]["4000/2000"], summary[m]["linear"]
        assert c["gains"] == list(knn) and p["gains"] == list(lin)
        for got, ref in ((c, knn), (p, lin)):
            assert got["mean"] == pytest.approx(ref.mean(), abs=0.005)
            assert got["sd"] == pytest.approx(ref.std(ddof=1), abs=0.005) and got["min"] == ref.min()
    assert summary["rotnet"]["train_min_mean"] == {"CPU": pytest.approx(2.0)}
    table = bench.table(summary)
    row = "| rotnet | recipe; 930 steps | 3 | +6.5, +2.0, +7.1 (+5.2 ± 2.8; +2.0) | +9.0, +4.5, +8.0 (+7.2 ± 2.4; +4.5)"
    assert row in table


def test_colour_prior_of_hand_made_images_is_their_colour_histograms_entropy(load_benchmark):
    # split-brain's diagnosis rests on this baseline: three images of one flat colour each, two of them red, give
    # ab targets whose marginal is (2/3, 1/3): entropy -(2/3 ln 2/3 + 1/3 ln 1/3), the commonest bin right 2/3 of
    # the time; their L targets likewise (red and blue differ in lightness)
    bench = load_benchmark("pretrain_pretext")
    red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])
    images = torch.stack([c[:, None, None].expand(3, 16, 16) for c in (red, red, blue)])
    prior = bench.prior_of(images)
    ref = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    for part in ("ab", "l"):
        assert prior[part]["entropy_nats"] == pytest.approx(ref, abs=1e-3)
        assert prior[part]["majority_acc"] == pytest.approx(2 / 3, abs=1e-4)
    grey = bench.prior_of(torch.full((2, 3, 8, 8), 0.5))  # one colour everywhere: no uncertainty at all
    assert grey["ab"]["entropy_nats"] == 0 and grey["l"]["majority_acc"] == 1
