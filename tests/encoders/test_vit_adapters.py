"""Every ViT checkpoint format yields the ViT its keys spell, computing what the release computes.

Each file is written in a release's own key layout (DINO's teacher/student training checkpoint and
its flat backbone files, MAE with its decoder, DINOv2 with layer scale, registers and SwiGLU, MoCo v3
with its momentum encoder and predictor, a whole open_clip CLIP) from one set of weights, and the
loaded encoder's taps are compared with a forward pass written here by hand, in float64, from those
weights: patch embedding, positions, attention heads, MLP, norms, class-token or mean-token pooling.
"""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encoders.adapters import FORMATS, detect_format, load_backbone, read_checkpoint
from encoders.registry import create_encoder
from harness.common.errors import HarnessError

from ..pickles import WritesMarker

ROOT = Path(__file__).resolve().parents[2]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


# --- one set of weights, and the forward pass the releases define --------------------------------------------

def make_weights(width=128, depth=2, patch=16, grid=2, *, regs=0, layer_scale=False, swiglu=False, pre_norm=False,
                 patch_bias=True, seed=0, embed_scale=1.0):
    """A ViT's weights by role (not by any file's key names); random, scaled so every part matters
    (``embed_scale``: small token embeddings, so that a pre-norm's LayerNorm epsilon shows)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm():
        return 1 + r(width), r(width)

    hidden = 4 * width
    blocks = []
    for _ in range(depth):
        blocks.append({
            "n1": norm(), "qkv_w": r(3 * width, width, scale=width ** -0.5), "qkv_b": r(3 * width),
            "proj_w": r(width, width, scale=width ** -0.5), "proj_b": r(width),
            "ls1": 1 + r(width) if layer_scale else None, "n2": norm(),
            "fc1_w": r(2 * hidden if swiglu else hidden, width, scale=width ** -0.5),
            "fc1_b": r(2 * hidden if swiglu else hidden),
            "fc2_w": r(width, hidden, scale=hidden ** -0.5), "fc2_b": r(width),
            "ls2": 1 + r(width) if layer_scale else None})
    return {"width": width, "patch": patch, "grid": grid, "swiglu": swiglu,
            "cls": r(width) * embed_scale, "pos": r(grid * grid + 1, width) * embed_scale,
            "regs": r(regs, width) if regs else None, "patch_w": r(width, 3, patch, patch, scale=0.05 * embed_scale),
            "patch_b": r(width) * embed_scale if patch_bias else None,
            "pre": norm() if pre_norm else None, "blocks": blocks, "norm": norm(), "fc_norm": norm()}


def reference(w, images, *, heads, act="gelu", eps=1e-6, stats=IMAGENET, pool="token"):
    """The taps by hand in float64: block outputs' patch tokens on the grid, and the embedding."""
    d = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in w.items()}
    blocks = [{k: (tuple(t.double() for t in v) if isinstance(v, tuple) else None if v is None else v.double())
               for k, v in b.items()} for b in w["blocks"]]
    mean, std = (torch.tensor(s, dtype=torch.float64).view(1, 3, 1, 1) for s in stats)
    x = (images.double() - mean) / std
    c = w["width"]

    def ln(t, p):
        return F.layer_norm(t, (c,), p[0].double(), p[1].double(), eps)

    fmap = F.conv2d(x, d["patch_w"], d["patch_b"], stride=w["patch"])
    b_, _, gh, gw = fmap.shape
    tokens = fmap.flatten(2).transpose(1, 2)
    pos = d["pos"][1:].reshape(1, w["grid"], w["grid"], c).permute(0, 3, 1, 2)
    if (gh, gw) != (w["grid"], w["grid"]):  # resampled as timm does at run time
        pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", antialias=True)
    tokens = tokens + pos.flatten(2).transpose(1, 2)
    prefix = [(d["cls"] + d["pos"][0]).expand(b_, 1, c)]
    if d["regs"] is not None:
        prefix.append(d["regs"].expand(b_, -1, -1))
    seq = torch.cat([*prefix, tokens], 1)
    n_prefix = seq.shape[1] - gh * gw
    if d["pre"] is not None:
        seq = ln(seq, d["pre"])
    activation = {"gelu": F.gelu, "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t)}[act]
    taps = {}
    for i, blk in enumerate(blocks, start=1):
        h = ln(seq, blk["n1"]) @ blk["qkv_w"].T + blk["qkv_b"]
        q, k, v = (t.reshape(b_, -1, heads, c // heads).transpose(1, 2) for t in h.split(c, dim=-1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b_, -1, c) @ blk["proj_w"].T + blk["proj_b"]
        seq = seq + (o * blk["ls1"] if blk["ls1"] is not None else o)
        f = ln(seq, blk["n2"]) @ blk["fc1_w"].T + blk["fc1_b"]
        if w["swiglu"]:
            gate, value = f.chunk(2, dim=-1)
            f = F.silu(gate) * value
        else:
            f = activation(f)
        f = f @ blk["fc2_w"].T + blk["fc2_b"]
        seq = seq + (f * blk["ls2"] if blk["ls2"] is not None else f)
        taps[f"block{i}"] = seq[:, n_prefix:].transpose(1, 2).reshape(b_, c, gh, gw)
    if pool == "token":
        taps["embedding"] = ln(seq, d["norm"])[:, 0]
    else:  # MAE fine-tuned: fc_norm of the mean patch token, no final norm
        taps["embedding"] = ln(seq[:, n_prefix:].mean(1), d["fc_norm"])
    return taps


# --- the releases' key layouts -----------------------------------------------------------------------------------

def timm_keys(w, final="norm"):
    """timm's names, which DINO, MAE and MoCo v3 use: cls_token, pos_embed, patch_embed.proj, blocks.N.*, norm."""
    c = w["width"]
    out = {"cls_token": w["cls"].reshape(1, 1, c), "pos_embed": w["pos"].reshape(1, -1, c),
           "patch_embed.proj.weight": w["patch_w"], "patch_embed.proj.bias": w["patch_b"]}
    for i, b in enumerate(w["blocks"]):
        p = f"blocks.{i}."
        out.update({p + "norm1.weight": b["n1"][0], p + "norm1.bias": b["n1"][1], p + "attn.qkv.weight": b["qkv_w"],
                    p + "attn.qkv.bias": b["qkv_b"], p + "attn.proj.weight": b["proj_w"],
                    p + "attn.proj.bias": b["proj_b"], p + "norm2.weight": b["n2"][0], p + "norm2.bias": b["n2"][1],
                    p + "mlp.fc1.weight": b["fc1_w"], p + "mlp.fc1.bias": b["fc1_b"],
                    p + "mlp.fc2.weight": b["fc2_w"], p + "mlp.fc2.bias": b["fc2_b"]})
    out[f"{final}.weight"], out[f"{final}.bias"] = w[final]
    return out


def dinov2_keys(w):
    """DINOv2's hub backbones: timm-like names, ls1/ls2.gamma, register_tokens, mask_token, SwiGLU as w12/w3."""
    out = timm_keys(w)
    c = w["width"]
    for i, b in enumerate(w["blocks"]):
        p = f"blocks.{i}."
        out[p + "ls1.gamma"], out[p + "ls2.gamma"] = b["ls1"], b["ls2"]
        if w["swiglu"]:
            for old, new in (("fc1", "w12"), ("fc2", "w3")):
                for s in ("weight", "bias"):
                    out[f"{p}mlp.{new}.{s}"] = out.pop(f"{p}mlp.{old}.{s}")
    if w["regs"] is not None:
        out["register_tokens"] = w["regs"].reshape(1, -1, c)
    out["mask_token"] = torch.zeros(1, c)
    return out


def open_clip_keys(w, embed_dim=32):
    """A whole open_clip / OpenAI CLIP state dict: the visual tower under visual.*, and a text tower."""
    c = w["width"]
    v = {"conv1.weight": w["patch_w"], "class_embedding": w["cls"], "positional_embedding": w["pos"],
         "ln_pre.weight": w["pre"][0], "ln_pre.bias": w["pre"][1],
         "ln_post.weight": w["norm"][0], "ln_post.bias": w["norm"][1], "proj": torch.randn(c, embed_dim)}
    for i, b in enumerate(w["blocks"]):
        p = f"transformer.resblocks.{i}."
        v.update({p + "ln_1.weight": b["n1"][0], p + "ln_1.bias": b["n1"][1],
                  p + "attn.in_proj_weight": b["qkv_w"], p + "attn.in_proj_bias": b["qkv_b"],
                  p + "attn.out_proj.weight": b["proj_w"], p + "attn.out_proj.bias": b["proj_b"],
                  p + "ln_2.weight": b["n2"][0], p + "ln_2.bias": b["n2"][1],
                  p + "mlp.c_fc.weight": b["fc1_w"], p + "mlp.c_fc.bias": b["fc1_b"],
                  p + "mlp.c_proj.weight": b["fc2_w"], p + "mlp.c_proj.bias": b["fc2_b"]})
    text = {"token_embedding.weight": torch.randn(100, embed_dim), "positional_embedding": torch.randn(77, embed_dim),
            "transformer.resblocks.0.ln_1.weight": torch.ones(embed_dim),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * embed_dim, embed_dim),
            "ln_final.weight": torch.ones(embed_dim), "text_projection": torch.randn(embed_dim, embed_dim),
            "logit_scale": torch.tensor(4.6)}
    return {**{"visual." + k: t for k, t in v.items()}, **text}


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def perturbed(state):
    return {k: v + 1 for k, v in state.items()}


def dino_full(w):
    """main_dino.py's checkpoint.pth: the teacher (not DDP-wrapped for a ViT), the student under DDP, args."""
    head = {"head.mlp.0.weight": torch.randn(64, w["width"]), "head.last_layer.weight_g": torch.ones(256, 1),
            "head.last_layer.weight_v": torch.randn(256, 64)}
    return {"student": prefixed(perturbed({**prefixed(timm_keys(w), "backbone."), **head}), "module."),
            "teacher": {**prefixed(timm_keys(w), "backbone."), **head},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=256, use_fp16=True),
            "dino_loss": {"center": torch.randn(1, 256)}}


def mae_pretrain(w):
    """main_pretrain.py's checkpoint: {'model': encoder + decoder + mask_token, 'args', ...}."""
    dec = {"mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.randn(64, w["width"]),
           "decoder_pos_embed": torch.randn(1, w["grid"] ** 2 + 1, 64), "decoder_blocks.0.norm1.weight": torch.ones(64),
           "decoder_norm.weight": torch.ones(64), "decoder_pred.weight": torch.randn(3 * w["patch"] ** 2, 64)}
    return {"model": {**timm_keys(w), **dec}, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16"),
            "optimizer": {"state": {}, "param_groups": []}, "scaler": {"scale": 65536.0}}


def mae_finetuned(w):
    """main_finetune.py with global_pool: fc_norm instead of the final norm, and a classifier head."""
    return {"model": {**timm_keys(w, final="fc_norm"), "head.weight": torch.randn(10, w["width"]),
                      "head.bias": torch.zeros(10)}}


def mocov3(w):
    """main_moco.py's checkpoint: the DDP-wrapped MoCo model; the base encoder's head is the projector."""
    c = w["width"]
    proj = {"head.0.weight": torch.randn(64, c), "head.1.weight": torch.ones(64), "head.1.bias": torch.zeros(64),
            "head.1.running_mean": torch.zeros(64), "head.1.running_var": torch.ones(64),
            "head.1.num_batches_tracked": torch.tensor(7), "head.3.weight": torch.randn(32, 64)}
    sd = {**prefixed({**timm_keys(w), **proj}, "module.base_encoder."),
          **prefixed(perturbed({**timm_keys(w), **proj}), "module.momentum_encoder."),
          "module.predictor.0.weight": torch.randn(64, 32), "module.predictor.3.weight": torch.randn(32, 64)}
    return {"epoch": 300, "arch": "vit_small", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 65536.0}}


def open_clip_ddp(w):
    """open_clip's own training checkpoint: DDP's module. prefix under state_dict."""
    return {"epoch": 32, "name": "run", "state_dict": prefixed(open_clip_keys(w), "module.")}


# case -> (format detected, weights, file builder, reference kwargs, (container path, key to remove, key to add))
DINO_W = {"seed": 1}
CLIP_W = {"seed": 7, "pre_norm": True, "patch_bias": False, "embed_scale": 0.003}
CASES = {
    "dino_vit_release": ("timm_vit", DINO_W, timm_keys, {}, ((), "blocks.1.mlp.fc2.weight", "blocks.1.attn.extra")),
    "dino_vit_full": ("dino", DINO_W, dino_full, {},
                      (("teacher",), "backbone.blocks.0.attn.qkv.bias", "backbone.blocks.0.attn.extra")),
    "mae_pretrain": ("mae", {"seed": 2}, mae_pretrain, {}, (("model",), "norm.bias", "blocks.0.attn.q_norm.weight")),
    "mae_finetuned": ("mae", {"seed": 3}, mae_finetuned, {"pool": "avg"},
                      (("model",), "blocks.1.norm2.bias", "norm.weight")),
    "dinov2": ("dinov2", {"seed": 4, "layer_scale": True, "patch": 14}, dinov2_keys, {},
               ((), "blocks.1.ls2.gamma", "blocks.1.ls3.gamma")),
    "dinov2_reg4_swiglu": ("dinov2", {"seed": 5, "layer_scale": True, "patch": 14, "grid": 3, "regs": 4,
                                      "swiglu": True}, dinov2_keys, {},
                           ((), "blocks.1.mlp.w3.weight", "blocks.1.mlp.w4.weight")),
    "mocov3_vit_small": ("mocov3", {"seed": 6, "width": 384, "depth": 1}, mocov3, {"heads": 12},
                         (("state_dict",), "module.base_encoder.patch_embed.proj.bias",
                          "module.base_encoder.blocks.0.attn.extra.weight")),
    "open_clip": ("open_clip", CLIP_W, open_clip_keys,
                  {"eps": 1e-5, "stats": CLIP},
                  ((), "visual.transformer.resblocks.1.mlp.c_proj.weight",
                   "visual.transformer.resblocks.1.ln_3.weight")),
    "open_clip_ddp": ("open_clip", {**CLIP_W, "seed": 8}, open_clip_ddp,
                      {"eps": 1e-5, "stats": CLIP},
                      (("state_dict",), "module.visual.ln_pre.bias", "module.visual.attn_pool.query")),
}


def image_size(w):
    return 2 * w["patch"]  # a 2x2 patch grid (the stored grid, or resampled to it)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_format_computes_the_releases_forward(case, tmp_path):
    fmt, wkw, build, ref_kw, _ = CASES[case]
    w = make_weights(**wkw)
    path = tmp_path / f"{case}.pth"
    torch.save(build(w), path)
    assert detect_format(read_checkpoint(path)).name == fmt
    enc = create_encoder(str(path))
    assert enc.info.extra["format"] == fmt
    assert enc.info.extra["depth"] == len(w["blocks"]) and enc.info.extra["patch_size"] == w["patch"]
    ref_kw = dict(ref_kw)
    heads = ref_kw.pop("heads", w["width"] // 64)
    assert enc.info.extra["heads"] == heads and "inferred" in enc.info.extra["heads_rule"]
    taps = tuple(f"block{i}" for i in range(1, len(w["blocks"]) + 1)) + ("embedding",)
    assert tuple(t for t in enc.taps) == taps and all(enc.taps[t].stride == w["patch"] for t in taps[:-1])
    x = torch.rand(2, 3, image_size(w), image_size(w), generator=torch.Generator().manual_seed(0))
    got = enc(x, taps)
    want = reference(w, x, heads=heads, **ref_kw)
    for t in taps:
        assert got[t].shape == want[t].shape, t
        torch.testing.assert_close(got[t].double(), want[t], rtol=1e-4, atol=1e-4, msg=f"{case} {t}")
    forced = create_encoder(str(path), fmt=fmt)  # --format names the same thing
    assert forced.fingerprint() == enc.fingerprint()


def test_cards_state_the_conventions(tmp_path):
    cards = {}
    for case in ("dino_vit_full", "mae_finetuned", "dinov2_reg4_swiglu", "open_clip", "mocov3_vit_small"):
        fmt, wkw, build, _, _ = CASES[case]
        torch.save(build(make_weights(**wkw)), tmp_path / f"{case}.pth")
        enc = create_encoder(str(tmp_path / f"{case}.pth"))
        cards[case] = (enc.info, enc.info.extra)
    info, card = cards["dino_vit_full"]
    assert info.method == "DINO" and card["embedding"] == "class token after the final norm"
    assert card["activation"].startswith("GELU (assumed") and card["prefix"] == "backbone."
    assert cards["mae_finetuned"][1]["embedding"].startswith("mean of the patch tokens")
    assert cards["mae_finetuned"][1]["fc_norm"] is True
    info, card = cards["dinov2_reg4_swiglu"]
    assert info.method == "DINOv2" and card["register_tokens"] == 4 and card["prefix_tokens"] == 5
    assert card["layer_scale"] is True and card["activation"].startswith("SiLU-gated")
    assert card["position_grid"].startswith("3x3 (class position folded")
    info, card = cards["open_clip"]
    assert info.method == "CLIP" and card["normalisation"] == "CLIP mean/std" and card["pre_norm"] is True
    assert card["layernorm_eps"] == 1e-5 and card["embedding"] == "class token after the final norm"
    assert "12 heads at width 384" in cards["mocov3_vit_small"][1]["heads_rule"]
    assert json.dumps({k: c for k, (_, c) in cards.items()})  # the card is plain data for the record


def test_mocov3_heads_matter_and_a_vit_s_elsewhere_has_six(tmp_path):
    """The same width-384 weights under MoCo v3 (12 heads) and as a flat timm file (6 heads, DINO's ViT-S):
    the heads are an assumption with consequences, so each must match its own reference."""
    w = make_weights(seed=6, width=384, depth=1)
    torch.save(mocov3(w), tmp_path / "moco.pth")
    torch.save(timm_keys(w), tmp_path / "flat.pth")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    moco = create_encoder(str(tmp_path / "moco.pth"))(x, ("embedding",))["embedding"].double()
    flat = create_encoder(str(tmp_path / "flat.pth"))(x, ("embedding",))["embedding"].double()
    torch.testing.assert_close(flat, reference(w, x, heads=6)["embedding"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(moco, reference(w, x, heads=12)["embedding"], rtol=1e-4, atol=1e-4)
    assert (moco - flat).abs().max() > 1e-2


def test_openai_clip_weights_use_quickgelu_by_format(tmp_path):
    w = make_weights(**CLIP_W)
    path = tmp_path / "clip.pth"
    torch.save(open_clip_keys(w), path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    quick = create_encoder(str(path), fmt="open_clip_quickgelu")
    assert quick.info.extra["activation"].startswith("QuickGELU") and not FORMATS["open_clip_quickgelu"].detect
    got = quick(x, ("block2", "embedding"))
    want = reference(w, x, heads=2, act="quick_gelu", eps=1e-5, stats=CLIP)
    for t in ("block2", "embedding"):
        torch.testing.assert_close(got[t].double(), want[t], rtol=1e-4, atol=1e-4)
    gelu = create_encoder(str(path))(x, ("embedding",))["embedding"]
    assert (gelu - got["embedding"]).abs().max() > 1e-3  # the choice is visible in the features


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_or_unexpected_backbone_key_is_refused_by_name(case, tmp_path):
    fmt, wkw, build, _, (where, victim, extra) = CASES[case]
    obj = build(make_weights(**wkw))
    state = obj
    for key in where:
        state = state[key]
    assert victim in state and extra not in state
    kept = state.pop(victim)
    torch.save(obj, tmp_path / "missing.pth")
    with pytest.raises(HarnessError, match=rf"1 backbone weights missing: {victim.replace('.', '[.]')}(\.|;|$)"):
        load_backbone(tmp_path / "missing.pth")
    state[victim] = kept
    state[extra] = torch.zeros(kept.shape[-1])
    torch.save(obj, tmp_path / "extra.pth")
    with pytest.raises(HarnessError, match=rf"1 unexpected keys: {extra.replace('.', '[.]')}\.") as exc:
        load_backbone(tmp_path / "extra.pth")
    assert "weights missing" not in str(exc.value)


def test_shapes_that_are_not_a_vit_are_refused(tmp_path):
    w = make_weights(seed=1)
    bad = timm_keys(w)
    bad["pos_embed"] = torch.randn(1, 7, 128)  # 7 positions: no square grid with or without the class token
    torch.save(bad, tmp_path / "pos.pth")
    with pytest.raises(HarnessError, match=r"pos_embed of shape \(1, 7, 128\) is not a square grid"):
        load_backbone(tmp_path / "pos.pth")
    bad = timm_keys(w)
    bad["blocks.1.attn.proj.weight"] = torch.randn(128, 64)
    torch.save(bad, tmp_path / "proj.pth")
    with pytest.raises(HarnessError, match=r"shapes differ: blocks\.1\.attn\.proj\.weight \(128, 64\) != \(128, 128\)"):
        load_backbone(tmp_path / "proj.pth")
    bad = {k: v for k, v in timm_keys(w).items() if not k.startswith("patch_embed.")}
    bad["patch_embed.norm.weight"] = torch.ones(128)  # still a timm ViT by its roots, but no patch projection
    torch.save(bad, tmp_path / "nopatch.pth")
    with pytest.raises(HarnessError, match=r"no patch embedding: patch_embed\.proj\.weight missing"):
        load_backbone(tmp_path / "nopatch.pth")
    twice = dinov2_keys(make_weights(seed=5, layer_scale=True, patch=14, swiglu=True))
    twice["blocks.0.mlp.fc1.weight"] = twice["blocks.0.mlp.w12.weight"]  # both DINOv2's and timm's name
    torch.save(twice, tmp_path / "twice.pth")
    with pytest.raises(HarnessError, match=r"blocks\.0\.mlp\.w12\.weight and blocks\.0\.mlp\.fc1\.weight are the same"):
        load_backbone(tmp_path / "twice.pth")
    torch.save({"state_dict": {"module.base_encoder.blocks.0.norm1.weight": torch.ones(8)}}, tmp_path / "m.pth")
    with pytest.raises(HarnessError, match=r"no patch embedding: module\.base_encoder\.patch_embed\.proj\.weight"):
        load_backbone(tmp_path / "m.pth", "mocov3")  # forced: reported in the layout its keys come closest to


def test_training_args_load_but_code_is_refused(tmp_path):
    """DINO's and MAE's training checkpoints carry argparse args (allowed: inert data); anything that runs
    code when unpickled is refused before it runs."""
    obj = dino_full(make_weights(seed=1))
    torch.save(obj, tmp_path / "ok.pth")
    assert read_checkpoint(tmp_path / "ok.pth")["args"].arch == "vit_small"
    marker = tmp_path / "marker"
    obj["args"] = WritesMarker(marker)
    torch.save(obj, tmp_path / "evil.pth")
    with pytest.raises(HarnessError, match=r"refused to load .*asks pickle for io\.open.*weights_only=True"):
        create_encoder(str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_eval_cli_on_a_dino_vit_file(tmp_path):
    path = tmp_path / "dino_tiny_vit.pth"
    torch.save(timm_keys(make_weights(seed=1)), path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", "--encoder", str(path), "--task", "synth_count",
                           "--limit", "32", "--epochs", "1", "--grid", "single", "--json", "--device", "cpu",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    rec = rec[0] if isinstance(rec, list) else rec
    assert rec["status"] == "ok" and rec["task"] == "synth_count" and rec["test"] is not None
    assert rec["encoder_info"]["extra"]["format"] == "timm_vit" and rec["encoder_info"]["arch"] == "vit_w128_d2_p16"
    assert rec["head_params"] == (128 + 1) * 6  # a linear probe on the 128-d class token, six classes
