"""The report page's template: what it prints is escaped and redacted, figure data is not."""

from __future__ import annotations

import base64
from pathlib import Path

from mipo_engine.report.data import RunData, StageRow
from mipo_engine.report.figures import Figure
from mipo_engine.report.html import render_report

TOKEN = "hf_" + "T" * 26


def _run() -> RunData:
    run = RunData(root=Path("."), label="demo")
    run.header = {"run": "it's <b>mine</b>", "model": TOKEN}
    run.stages = [StageRow("gen", "generate", "done", "g.parquet", note=f"key {TOKEN} & <i>")]
    run.problems = [f"<script>{TOKEN}</script>"]
    return run


def test_every_printed_value_is_redacted_and_escaped():
    page = render_report([(_run(), {})], generated_at="2026-01-01T00:00:00")
    assert TOKEN not in page
    assert "<title>mipo report: it&#x27;s &lt;b&gt;mine&lt;/b&gt;</title>" in page
    assert "<dd>&lt;redacted&gt;</dd>" in page
    assert "<td>key &lt;redacted&gt; &amp; &lt;i&gt;</td>" in page
    assert "<li>demo: &lt;script&gt;&lt;redacted&gt;&lt;/script&gt;</li>" in page
    assert "<script" not in page and "<i>" not in page
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")


def test_figure_data_is_embedded_as_it_is():
    """Base64 that happens to look like a cloud key (AKIA + 16 capitals) stays intact."""
    data = "AKIA" + "ABCDEFGHIJKLMNOP" + "QQ=="
    figure = Figure("loss.png", "Loss <1>", "caption & more", base64.b64decode(data))
    page = render_report([(_run(), {"pmi": figure})], generated_at="now")
    assert f'src="data:image/png;base64,{data}"' in page
    assert 'alt="Loss &lt;1&gt;"' in page and "caption &amp; more" in page
