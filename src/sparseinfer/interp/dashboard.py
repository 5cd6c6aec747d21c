"""A static feature browser (no server): `index.html` with search and sortable columns over every interpreted
latent of every encoder, and one page per latent with its explanation, scores, logit-lens tokens, activation
histogram (inline SVG) and top/sampled contexts, each token shaded by the latent's activation (hover shows the
value)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from sparseinfer.errors import SparseInferError
from sparseinfer.interp.examples import Example, LatentExamples, load_examples
from sparseinfer.interp.pipeline import SCORES

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f4f4f4;user-select:none}th:hover{background:#e8e8e8}
#search{width:40%;padding:6px;font-size:1em;margin-bottom:1em}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;padding:6px;margin:4px 0;background:#fafafa;
border-left:3px solid #ccc}
.tok{border-radius:2px}.peak{outline:2px solid #c00}.meta{color:#666;font-size:.9em}
.scores span{display:inline-block;margin-right:1.5em}
.lens code{background:#eef4ff;border:1px solid #c8d8f0;border-radius:3px;padding:1px 4px;margin-right:4px}
"""

SORT_SCRIPT = """
const q=document.getElementById('search'),rows=[...document.querySelectorAll('#latents tbody tr')];
q.addEventListener('input',()=>{const s=q.value.toLowerCase();
 rows.forEach(r=>r.style.display=r.textContent.toLowerCase().includes(s)?'':'none');
 document.getElementById('count').textContent=rows.filter(r=>r.style.display!=='none').length;});
document.querySelectorAll('#latents th').forEach((th,i)=>th.addEventListener('click',()=>{
 const body=th.closest('table').tBodies[0],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 const key=r=>{const c=r.cells[i],v=c.dataset.v??c.textContent;const n=parseFloat(v);return isNaN(n)?v:n;};
 [...body.rows].sort((a,b)=>{const x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1);})
 .forEach(r=>body.appendChild(r));}));
"""


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}<script>{script}</script></body></html>")  # fmt: skip


def _num(value: object, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def lens_html(tokens: object) -> str:
    """The logit-lens tokens (a list, or the array Parquet gives back) as code chips; "" when there are none."""
    listed = [] if tokens is None or isinstance(tokens, float) else [str(t) for t in tokens]  # type: ignore[attr-defined]
    if not listed:
        return ""
    chips = "".join(f"<code>{html.escape(repr(t))}</code>" for t in listed)
    return f"<p class='lens'><b>Logit lens (promoted tokens):</b> {chips}</p>"


def page_name(encoder: str, latent: int) -> str:
    """File name of a latent's page inside the site's `latents/` folder."""
    return f"{encoder}-{latent}.html"


def context_html(ex: Example, max_act: float) -> str:
    """One window: tokens as spans shaded by activation / `max_act`, the peak outlined, values in tooltips."""
    spans = []
    for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts, strict=True)):
        alpha = 0.0 if max_act <= 0 else min(1.0, max(0.0, act / max_act))
        cls = "tok peak" if i == ex.peak else "tok"
        style = f"background:rgba(255,120,0,{alpha:.2f})" if act > 0 else ""
        spans.append(f"<span class='{cls}' data-act='{act:.4g}' title='{act:.3f}' style='{style}'>"
                     f"{html.escape(tok)}</span>")  # fmt: skip
    return f"<div class='ctx'>{''.join(spans)}</div>"


def histogram_svg(counts: list[int], edges: list[float], width: int = 480, height: int = 120) -> str:
    """Bars of the nonzero-activation histogram as inline SVG, with the value range under it."""
    if not counts:
        return ""
    top = max(counts) or 1
    bar = width / len(counts)
    rects = "".join(
        f"<rect x='{i * bar:.1f}' y='{height - c / top * height:.1f}' width='{bar - 1:.1f}' "
        f"height='{c / top * height:.1f}' fill='#e67e22'><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    label = f"<text x='0' y='{height + 14}' font-size='11'>{edges[0]:.3g}</text>"
    label += f"<text x='{width}' y='{height + 14}' font-size='11' text-anchor='end'>{edges[-1]:.3g}</text>"
    return f"<svg class='hist' width='{width}' height='{height + 18}'>{rects}{label}</svg>"


def latent_page(encoder: str, record: LatentExamples, row: dict) -> str:
    """The page of one latent."""
    scores = "".join(f"<span>{k.replace('_', ' ')}: <b>{_num(row.get(k))}</b></span>"
                     for k in ("detection_f1", "detection_bacc", "fuzzing_f1", "fuzzing_bacc",
                               "embedding_auroc"))  # fmt: skip
    body = [
        "<p><a href='../index.html'>&larr; all latents</a></p>",
        f"<h1>{html.escape(encoder)} / latent {record.latent}</h1>",
        f"<p class='explanation'><b>Explanation:</b> {html.escape(str(row.get('explanation', '')))}</p>",
        f"<p class='scores'>{scores}</p>",
        lens_html(row.get("logit_tokens")),
        f"<p class='meta'>fires on {record.frequency:.3%} of tokens ({record.count} times), "
        f"max activation {record.max_activation:.3f}</p>",
        "<h2>Activation histogram (nonzero)</h2>", histogram_svg(*record.histogram),
        "<h2>Top contexts</h2>", *(context_html(ex, record.max_activation) for ex in record.top),
        "<h2>Samples across quantiles</h2>", *(context_html(ex, record.max_activation) for ex in record.samples),
    ]  # fmt: skip
    return _page(f"{encoder} latent {record.latent}", "\n".join(body))


def write_dashboard(results: str | Path, site: str | Path | None = None) -> Path:
    """Write the site for an `interpret` results folder into `site` (default RESULTS/site); returns index.html."""
    results = Path(results)
    if not (results / SCORES).exists():
        raise SparseInferError(f"{results} has no {SCORES}; run `sparseinfer interpret` first")
    scores = pd.read_parquet(results / SCORES)
    site = Path(site) if site is not None else results / "site"
    (site / "latents").mkdir(parents=True, exist_ok=True)
    rows_html = []
    for encoder, group in scores.groupby("encoder", sort=False):
        records = {r.latent: r for r in load_examples(results / str(encoder) / "examples.json")}
        for row in group.to_dict("records"):
            record = records.get(int(row["latent"]))
            if record is None:
                continue
            name = page_name(str(encoder), record.latent)
            (site / "latents" / name).write_text(latent_page(str(encoder), record, row), encoding="utf-8")
            cells = [
                f"<td>{html.escape(str(encoder))}</td>",
                f"<td data-v='{record.latent}'><a href='latents/{name}'>{record.latent}</a></td>",
                f"<td>{html.escape(str(row.get('explanation', '')))}</td>",
                f"<td data-v='{record.frequency}'>{record.frequency:.3%}</td>",
                *(f"<td>{_num(row.get(k))}</td>" for k in ("detection_f1", "fuzzing_f1", "embedding_auroc")),
            ]
            rows_html.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("encoder", "latent", "explanation", "frequency", "detection F1",
                                              "fuzzing F1", "embedding AUROC"))  # fmt: skip
    body = (f"<h1>Feature browser</h1><input id='search' placeholder='search explanations, encoders, latents'>"
            f" <span id='count'>{len(rows_html)}</span> latents"
            f"<table id='latents'><thead><tr>{head}</tr></thead><tbody>{''.join(rows_html)}</tbody></table>"
            f"<script type='application/json' id='meta'>{json.dumps({'results': str(results)})}</script>")  # fmt: skip
    index = site / "index.html"
    index.write_text(_page("Feature browser", body, SORT_SCRIPT), encoding="utf-8")
    return index
