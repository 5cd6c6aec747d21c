"""The static feature browser: page content from hand-made records, and, where Debian's chromium is installed,
a headless-browser check that the index loads, search filters, sorting works and a latent page shows shaded tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sparseinfer.cli import app
from sparseinfer.errors import SparseInferError
from sparseinfer.interp.dashboard import write_dashboard
from sparseinfer.interp.examples import Example, LatentExamples, save_examples

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _record(latent: int, word: str) -> LatentExamples:
    ex = Example(["The", " quick", f" {word}", " jumps", " <over>"], [0.0, 0.5, 2.0, 0.0, 0.0], 2, 0, 3)
    return LatentExamples(latent, 10, 0.01 * latent, 2.0, [ex], [ex], [], ([1, 3, 6], [0.0, 1.0, 1.5, 2.0]))


@pytest.fixture
def results(tmp_path) -> Path:
    rows = []
    for enc, words in (("relu", ["fox", "dog"]), ("topk", ["cat"])):
        (tmp_path / enc).mkdir()
        save_examples([_record(i + 1, w) for i, w in enumerate(words)], tmp_path / enc / "examples.json")
        rows += [{"encoder": enc, "latent": i + 1, "frequency": 0.01 * (i + 1), "explanation": f"the word {w}",
                  "detection_f1": 0.5 + 0.1 * i, "fuzzing_f1": float("nan"), "embedding_auroc": 0.75 + 0.1 * i,
                  "logit_tokens": [f" {w}s", "<b>"]} for i, w in enumerate(words)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "scores.parquet")
    return tmp_path


def test_site_content(results):
    result = CliRunner().invoke(app, ["dashboard", str(results)])
    assert result.exit_code == 0, result.output
    index = (results / "site" / "index.html").read_text()
    assert index.count("<tr>") == 4 and "the word fox" in index and "latents/topk-1.html" in index
    page = (results / "site" / "latents" / "relu-2.html").read_text()
    assert "the word dog" in page and "&lt;over&gt;" in page  # tokens are escaped
    assert "rgba(255,120,0,1.00)" in page and "rgba(255,120,0,0.25)" in page  # 2.0/2.0 and 0.5/2.0
    assert page.count("<rect") == 3 and "detection f1: <b>0.600</b>" in page and "fuzzing f1: <b>-</b>" in page
    assert "embedding auroc: <b>0.850</b>" in page and "<td>0.750</td>" in index and "embedding AUROC" in index
    assert "<code>&#x27; dogs&#x27;</code><code>&#x27;&lt;b&gt;&#x27;</code>" in page  # logit lens, escaped
    with pytest.raises(SparseInferError, match=r"no scores\.parquet"):
        write_dashboard(results / "relu")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_site_in_headless_chromium(results, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    index = write_dashboard(results)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page()
        page.goto(index.as_uri())
        visible = "rows => rows.filter(r => r.style.display !== 'none').length"
        assert page.locator("#latents tbody tr").count() == 3
        page.fill("#search", "dog")
        assert page.eval_on_selector_all("#latents tbody tr", visible) == 1
        assert page.inner_text("#count") == "1"
        page.fill("#search", "")
        page.click("th:has-text('detection F1')")
        page.click("th:has-text('detection F1')")  # second click: descending
        firsts = page.eval_on_selector_all("#latents tbody tr", "rows => rows.map(r => r.cells[4].textContent)")
        assert firsts == sorted(firsts, reverse=True)
        page.click("a[href='latents/relu-1.html']")
        assert page.locator(".peak").first.inner_text() == " fox"
        shaded = page.eval_on_selector_all(".tok", "s => s.filter(x => x.style.background).length")
        assert shaded == 4  # two windows, two activating tokens each
        page.screenshot(path=str(tmp_path / "latent.png"), full_page=True)
        browser.close()
    assert (tmp_path / "latent.png").stat().st_size > 1000
