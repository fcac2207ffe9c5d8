"""`lmkit explain`: what a model does with a piece of text, as one self-contained HTML page.

- surprisal of each token, −log2 p(t_i | t_<i) in bits, as the colour behind it;
- the top-k next-token distribution after any position (click a token);
- the attention weights softmax(Q Kᵀ / √d_k) of every layer and head: a PNG grid per layer, and a
  token-to-token view (hover a token to see where it looks).
Also the token-embedding map: the embedding matrix projected on its first two principal components.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from .errors import LmkitError
from .evaluate.lm import check_counts
from .io import atomic_path, atomic_write_text
from .models.attention import record_attention
from .viz import save_figure

CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
             "Microsoft YaHei", "PingFang SC", "SimHei", "Arial Unicode MS"]


def _plt():
    import warnings
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # no CJK font: boxes, not noise
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    known = {f.name for f in font_manager.fontManager.ttflist}
    plt.rcParams["font.family"] = ["DejaVu Sans"] + [f for f in CJK_FONTS if f in known]  # CJK when installed
    return plt


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Readable text of each token; a byte-level piece of a multi-byte character shows as its bytes."""
    out = []
    for i in ids:
        s = tokenizer.decode([i])
        if "\ufffd" in s:
            s = tokenizer.hf.id_to_token(i) or s
        out.append(s)
    return out


@torch.no_grad()
def analyse(lm, text: str, top_k: int = 10) -> dict:
    """Tokens, surprisal, top-k next tokens and attention maps of `text` under the model."""
    check_counts(top_k=top_k)
    tok, model = lm.tokenizer, lm.model
    body = tok.encode(text)
    if not body:
        raise LmkitError("explain: the text is empty")
    causal = getattr(model, "is_causal", True)
    if causal:
        prefix = [tok.eot_id] if tok.eot_id is not None else []  # predict the first token too
        ids = (prefix + body)[-model.config.block_size:]
    else:  # an encoder reads [CLS] text [SEP], every token seeing every other
        ids = [tok.cls_id] + body[: model.config.block_size - 2] + [tok.sep_id]
    first = max(0, len(ids) - len(body)) if causal else 1  # position of the text's first token
    model.eval()
    with record_attention() as maps:
        logits = model(torch.tensor([ids], device=lm.device))[0][0].float()  # (T, V)
    logp = logits.log_softmax(-1)
    surprisal = [None] * len(ids)
    if causal:
        for t in range(1, len(ids)):
            surprisal[t] = -logp[t - 1, ids[t]].item() / math.log(2)
    top = logp.topk(min(top_k, logp.size(-1)), dim=-1)
    labels = token_labels(tok, ids)
    return {
        "tokens": labels, "ids": ids, "first": first, "surprisal": surprisal, "causal": causal,
        "topk": [[[token_labels(tok, [int(j)])[0], math.exp(float(p))] for p, j in zip(pv, iv)]
                 for pv, iv in zip(top.values.tolist(), top.indices.tolist())],
        "attention": [m[0].cpu().numpy() for m in maps],  # per layer: (H, T, T)
    }


def attention_grid_png(att: np.ndarray, layer: int, labels: list[str]) -> bytes:
    """One row of heatmaps, one per head, of a layer's attention weights."""
    plt = _plt()
    H, T = att.shape[0], att.shape[1]
    fig, axes = plt.subplots(1, H, figsize=(2.4 * H + 0.5, 3.2), dpi=90, squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(att[h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer} · head {h}", fontsize=8)
        if T <= 24:
            ax.set_xticks(range(T), [l.replace("\n", "⏎") for l in labels], rotation=90, fontsize=6)
            ax.set_yticks(range(T), [l.replace("\n", "⏎") for l in labels], fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.supxlabel("key (attended to)", fontsize=8)
    fig.supylabel("query", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_page(lm, text: str, out: str | Path, top_k: int = 10) -> Path:
    out = Path(out)
    a = analyse(lm, text, top_k)
    pngs = []
    for i, att in enumerate(a["attention"]):
        png = attention_grid_png(att, i, a["tokens"])
        with atomic_path(out.with_name(f"{out.stem}_layer{i}.png")) as tmp:
            tmp.write_bytes(png)
        pngs.append(base64.b64encode(png).decode())
    data = {k: a[k] for k in ("tokens", "surprisal", "topk", "causal", "first")}
    data["attention"] = [np.round(att, 4).tolist() for att in a["attention"]]
    name = html.escape(str(lm.path or "model"))
    grids = "\n".join(f'<img alt="attention, layer {i}" src="data:image/png;base64,{p}">' for i, p in enumerate(pngs))
    page = PAGE.replace("__TITLE__", name).replace("__GRIDS__", grids) \
        .replace("__DATA__", json.dumps(data, ensure_ascii=False).replace("</", "<\\/"))
    atomic_write_text(out, page)
    return out


def embeddings_png(lm, out: str | Path, n_labels: int = 60) -> Path:
    """The token-embedding matrix on its first two principal components, most frequent tokens labelled."""
    plt = _plt()
    E = lm.model.wte.weight.detach().float().cpu()
    E = E - E.mean(0, keepdim=True)
    _, _, V = torch.linalg.svd(E, full_matrices=False)
    xy = (E @ V[:2].T).numpy()  # (vocab, 2)
    counts = token_counts(lm)
    order = np.argsort(-counts) if counts is not None else np.arange(len(xy))
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.3, color="gray")
    labels = token_labels(lm.tokenizer, [int(i) for i in order[:n_labels]])
    for i, lab in zip(order[:n_labels], labels):
        ax.annotate(lab.replace("\n", "⏎").replace(" ", "␣"), xy[i], fontsize=8)
    ax.set_title(f"token embeddings, PCA ({'most frequent' if counts is not None else 'first'} {n_labels} labelled)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return save_figure(fig, out)


def token_counts(lm) -> np.ndarray | None:
    """Token frequencies from the run's own prepared data, when it has some that reads (they only choose
    which tokens the map labels: a prepared folder that is gone or damaged means no counts, not an error)."""
    if lm.path is None:
        return None
    for data in (lm.path / "data", Path(lm.config.data.data)):
        f = data / "train.bin"
        if (data / "meta.json").is_file() and f.is_file():
            try:
                meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
                tokens = np.memmap(f, dtype=np.dtype(meta["dtype"]), mode="r")[:10_000_000]
                return np.bincount(tokens, minlength=lm.model.wte.weight.size(0))[: lm.model.wte.weight.size(0)]
            except (OSError, ValueError, TypeError, KeyError):
                return None
    return None


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmkit explain · __TITLE__</title>
<style>
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI","Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
.tokens{line-height:2.1;font-family:ui-monospace,Menlo,Consolas,"Noto Sans Mono CJK SC",monospace;white-space:pre-wrap}
.tok{padding:2px 1px;border-radius:3px;cursor:pointer;border:1px solid transparent}
.tok.sel{border-color:#000}
table{border-collapse:collapse;font-size:13px} td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
.bar{background:#4a7bd0;height:10px;display:inline-block}
.grid img{max-width:100%;display:block;margin:8px 0}
.legend span{display:inline-block;width:40px;height:12px}
select{font-size:14px}
</style></head><body>
<h1>lmkit explain · __TITLE__</h1>
<h2>Surprisal: −log<sub>2</sub> p(token | everything before it), in bits</h2>
<div class="legend">low <span style="background:hsl(120,70%,85%)"></span><span style="background:hsl(60,70%,80%)"></span><span style="background:hsl(0,70%,78%)"></span> high · click a token to see what the model expected next</div>
<p class="tokens" id="surprisal"></p>
<div id="topk"></div>
<h2>Attention, token to token</h2>
<p>Layer <select id="layer"></select> head <select id="head"></select> · hover a token: the shading shows how much it attends to each token (softmax(QKᵀ/√d<sub>k</sub>), each row sums to 1).</p>
<p class="tokens" id="attn"></p>
<h2>Attention maps, every layer and head</h2>
<div class="grid">__GRIDS__</div>
<script>
const D = __DATA__;
const esc = s => s.replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const show = s => esc(s.replace(/\\n/g, "⏎\\n"));
function colour(bits){ if(bits===null) return "#eee"; const x=Math.min(1,bits/12); return `hsl(${120-120*x},70%,${85-7*x}%)`; }
const sp = document.getElementById("surprisal");
D.tokens.forEach((t,i)=>{ const s=document.createElement("span"); s.className="tok"; s.innerHTML=show(t);
  s.style.background=colour(D.surprisal[i]);
  s.title=D.surprisal[i]===null?"(no prediction)":D.surprisal[i].toFixed(2)+" bits";
  s.onclick=()=>{document.querySelectorAll("#surprisal .tok").forEach(e=>e.classList.remove("sel")); s.classList.add("sel"); topk(i);};
  sp.appendChild(s); });
function topk(i){ const rows=D.topk[i].map(([t,p])=>`<tr><td>${show(t)}</td><td>${(100*p).toFixed(2)}%</td><td><span class="bar" style="width:${Math.round(300*p)}px"></span></td></tr>`).join("");
  document.getElementById("topk").innerHTML=`<p>${D.causal?"Next token after":"At"} <b>${show(D.tokens[i])}</b> (position ${i}):</p><table><tr><th>token</th><th>p</th><th></th></tr>${rows}</table>`; }
const L=document.getElementById("layer"), H=document.getElementById("head"), A=document.getElementById("attn");
D.attention.forEach((_,i)=>L.add(new Option(i,i))); (D.attention[0]||[]).forEach((_,h)=>H.add(new Option(h,h)));
function attnView(q){ if(!D.attention.length) return; const m=D.attention[+L.value][+H.value];
  [...A.children].forEach((s,k)=>{ const w=q===null?0:m[q][k]; s.style.background=`rgba(74,123,208,${Math.min(1,w*1.5)})`; s.classList.toggle("sel",k===q); }); }
D.tokens.forEach((t,i)=>{ const s=document.createElement("span"); s.className="tok"; s.innerHTML=show(t);
  s.onmouseenter=()=>attnView(i); A.appendChild(s); });
L.onchange=H.onchange=()=>attnView(null);
topk(Math.max(0, D.first));
</script></body></html>
"""
