"""An independent float64 reference forward of PVT-v1 and DPT, written from the paper notes (not from
our modules): patch embedding as unfold + matmul, spatial-reduction attention with an explicit
softmax, DePatch decode + per-point bilinear gather, the cls token prepended to stage 4 and read out
at index 0. Our models (random weights, non-zero DePatch offsets) must give the same logits and
feature maps; any changed line of the forward (an index, a norm, a scale, a residual) breaks it."""

import math

import pytest
import torch

torch.set_num_threads(1)

from depatch import create_model

BLOCK_EPS = 1e-6  # PVT-v1 blocks and the final norm: LayerNorm(eps=1e-6)
EMBED_EPS = 1e-5  # the patch embeddings' LayerNorm (and DePatch's) use torch's default eps


def ln(x, sd, prefix, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]


def linear(x, sd, prefix, bias=True):
    y = x @ sd[f"{prefix}.weight"].T
    return y + sd[f"{prefix}.bias"] if bias else y


def patchify(img, weight, bias, p):
    """Conv p x p / stride p as a matrix product over non-overlapping patches -> (B, h*w, D), (h, w)."""
    B, C, H, W = img.shape
    h, w = H // p, W // p
    x = img[:, :, : h * p, : w * p].reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)
    return x @ weight.reshape(weight.shape[0], -1).T + bias, (h, w)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def bilinear(fmap, px, py):
    """fmap (B, C, H, W); px, py (B, P) normalised in [0, 1] with pixel i centred at (i + 0.5) / size;
    neighbours outside the map count as zero. Returns (B, P, C)."""
    B, C, H, W = fmap.shape
    u, v = px * W - 0.5, py * H - 0.5
    x0, y0 = torch.floor(u), torch.floor(v)
    out = torch.zeros(B, px.shape[1], C, dtype=fmap.dtype)
    flat = fmap.reshape(B, C, H * W)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - (u - xi).abs()) * (1 - (v - yi).abs())
            ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()
            vals = torch.gather(flat, 2, idx.unsqueeze(1).expand(B, C, -1)).transpose(1, 2)
            out += (wgt * ok).unsqueeze(-1) * vals
    return out


def depatch(x, sd, prefix, k):
    """The notes' DePatch on an even-sized map x (B, C, H, W) with 2x2 patches."""
    B, C, H, W = x.shape
    feat, (h, w) = patchify(x, sd[f"{prefix}.patch_embed.proj.weight"], sd[f"{prefix}.patch_embed.proj.bias"], 2)
    feat = ln(feat, sd, f"{prefix}.patch_embed.norm", EMBED_EPS)
    codes = gelu(feat) @ sd[f"{prefix}.offset_predictor.weight"].T  # (B, N, 4) or (B, N, 2)
    if codes.shape[-1] == 2:
        codes = torch.cat([codes, torch.zeros_like(codes)], -1)
    i, j = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    ax, ay = ((j + 0.5) / w).reshape(1, -1), ((i + 0.5) / h).reshape(1, -1)
    cx, cy = ax + torch.tanh(codes[..., 0]) / w, ay + torch.tanh(codes[..., 1]) / h
    b = sd[f"{prefix}.box_coder.wh_bias"]
    hw = torch.relu(torch.tanh(codes[..., 2] + b[0])) / w
    hh = torch.relu(torch.tanh(codes[..., 3] + b[1])) / h
    x1, x2 = (cx - hw).clamp(0, 1), (cx + hw).clamp(0, 1)
    y1, y2 = (cy - hh).clamp(0, 1), (cy + hh).clamp(0, 1)
    samples = []
    for a in range(k):  # x index outer, y index inner: the official point order
        for c in range(k):
            px, py = x1 + (x2 - x1) * a / (k - 1), y1 + (y2 - y1) * c / (k - 1)
            samples.append(bilinear(x, px, py))
    tokens = torch.cat(samples, dim=-1)  # (B, N, k*k*C), point-major
    out = ln(linear(tokens, sd, f"{prefix}.output_proj"), sd, f"{prefix}.norm", EMBED_EPS)
    return out, (h, w)


def attention(x, sd, prefix, heads, sr, h, w):
    B, N, D = x.shape
    hd = D // heads
    q = linear(x, sd, f"{prefix}.q").reshape(B, N, heads, hd).transpose(1, 2)
    src = x
    if sr > 1:
        fmap = x.transpose(1, 2).reshape(B, D, h, w)
        src, _ = patchify(fmap, sd[f"{prefix}.sr.weight"], sd[f"{prefix}.sr.bias"], sr)
        src = ln(src, sd, f"{prefix}.norm", EMBED_EPS)
    kv = linear(src, sd, f"{prefix}.kv").reshape(B, -1, 2, heads, hd)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, D)
    return linear(out, sd, f"{prefix}.proj")


def block(x, sd, prefix, heads, sr, h, w):
    x = x + attention(ln(x, sd, f"{prefix}.norm1", BLOCK_EPS), sd, f"{prefix}.attn", heads, sr, h, w)
    y = ln(x, sd, f"{prefix}.norm2", BLOCK_EPS)
    return x + linear(gelu(linear(y, sd, f"{prefix}.mlp.fc1")), sd, f"{prefix}.mlp.fc2")


def reference_forward(sd, cfg, img):
    """Logits (classifier) and the stage maps before stage 4."""
    x, maps = img, []
    n = len(cfg["embed_dims"])
    for s in range(n):
        p = f"patch_embed{s + 1}"
        if cfg["depatch"][s]:
            tok, (h, w) = depatch(x, sd, p, cfg["num_points"])
        else:
            tok, (h, w) = patchify(x, sd[f"{p}.proj.weight"], sd[f"{p}.proj.bias"], 4 if s == 0 else 2)
            tok = ln(tok, sd, f"{p}.norm", EMBED_EPS)
        pos = sd[f"pos_embed{s + 1}"]
        if s == n - 1:
            tok = torch.cat([sd["cls_token"].expand(tok.shape[0], -1, -1), tok], dim=1) + pos
        else:
            tok = tok + pos
        for d in range(cfg["depths"][s]):
            tok = block(tok, sd, f"block{s + 1}.{d}", cfg["num_heads"][s], cfg["sr_ratios"][s], h, w)
        if s < n - 1:
            x = tok.transpose(1, 2).reshape(tok.shape[0], -1, h, w)
            maps.append(x)
    cls = ln(tok, sd, "norm", BLOCK_EPS)[:, 0]  # the cls token sits at index 0
    return linear(cls, sd, "head"), maps


def _randomised(name, **kw):
    torch.manual_seed(7)
    m = create_model(name, num_classes=5, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():  # no zero/one defaults left: every term of the forward matters
            p.add_(0.05 * torch.randn_like(p))
        for dep in m.depatch_modules().values():  # boxes move and resize, some hit the image border
            dep.offset_predictor.weight.normal_(0, 1.0)
    return m


CASES = {"pvt_mini": {}, "dpt_mini": {}, "dpt_mini_offsets_only": {"predict_size": False},
         "dpt_mini_stage4": {"depatch_stages": [4]}, "dpt_mini_2pts": {"num_points": 2}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_equals_the_independent_reference(case):
    kw = CASES[case]
    name = case if case in ("pvt_mini", "dpt_mini") else "dpt_mini"
    m = _randomised(name, **kw)
    cfg = {"embed_dims": m.embed_dims, "depatch": m.depatch, "depths": m.depths, "num_points": kw.get("num_points", 3),
           "num_heads": [blk.attn.num_heads for blk in (getattr(m, f"block{i}")[0] for i in range(1, 5))],
           "sr_ratios": [blk.attn.sr_ratio for blk in (getattr(m, f"block{i}")[0] for i in range(1, 5))]}
    assert cfg["num_heads"] == [1, 2, 3, 4] and cfg["sr_ratios"] == [4, 2, 1, 1]
    img = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    ref_logits, ref_maps = reference_forward(sd, cfg, img)
    with torch.no_grad():
        logits = m(img)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)
    assert logits.std() > 0.01  # a non-trivial output
    # the backbone maps of a features_only model carrying the same weights
    feat = create_model(name, features_only=True, **kw).double().eval()
    feat.load_state_dict({k: v for k, v in sd.items() if k in feat.state_dict()})
    with torch.no_grad():
        maps = feat(img)[:3]
    for a, b in zip(maps, ref_maps):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
