"""tools/check_pages.py: the reader's-eye page check of the built book."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import check_pages as cp  # noqa: E402

GOOD = """<html><body><article style="width:600px">
<p>Plain prose, <a href="other.html#sec">a local link</a>, <a href="https://example.org">a site</a>.</p>
<div class="cell_output"><pre style="white-space:pre-wrap">all fine</pre></div>
</article></body></html>"""

BAD = r"""<html><body><article style="width:600px">
<p>Raw math \(x^2\) left for a CDN MathJax that never loads.</p>
<p><a href="http://REFERENCE.md">REFERENCE.md</a> <a href="missing.html">gone</a>
   <a href="other.html#nope">no anchor</a></p>
<div class="cell_output"><pre>WARNING:root:No pretrained weights loaded</pre></div>
<table><tr><th>pro</th></tr><tr><td>NaN</td></tr></table>
<pre style="white-space:pre; overflow-x:auto">%s</pre>
<div><img alt="too wide" style="width:900px; height:10px" src="data:image/gif;base64,R0lGODlhAQABAAAAACw="></div>
</article></body></html>""" % ("x" * 300)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=good.html" />')
    (tmp_path / "good.html").write_text(GOOD)
    (tmp_path / "bad.html").write_text(BAD)
    (tmp_path / "other.html").write_text('<html><body><h2 id="sec">x</h2></body></html>')
    (tmp_path / "genindex.html").write_text("<html></html>")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "x.html").write_text("<html></html>")
    return tmp_path


def test_pages_skip_redirect_sphinx_pages_and_static(site):
    names = [p.name for p in cp.chapter_pages(site)]
    assert names == ["bad.html", "good.html", "other.html"]


def test_missing_site_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        cp.chapter_pages(tmp_path)


@pytest.mark.parametrize("href, problem", [
    ("http://REFERENCE.md", "bare file name"),
    ("https://train.py/", "bare file name"),
    ("https://example.org/paper.md", None),  # a file on a real site is fine
    ("https://github.com/x/y", None),
    ("other.html", None),
    ("other.html#sec", None),
    ("other.html#nope", "broken anchor"),
    ("missing.html", "broken local link"),
    ("#", None),
    ("mailto:a@b.c", None),
])
def test_link_problems(site, href, problem):
    why = cp.link_problem(site / "good.html", href, site)
    assert (why is None) if problem is None else (problem in why), why


def test_parse_probe_reads_the_json_the_theme_decorated():
    dom = '<body><pre id="pm-page-check" tabindex="0">{"raw_tex": ["\\\\(x\\\\)"], "links": ["a&amp;b"]}</pre>'
    assert cp.parse_probe(dom) == {"raw_tex": ["\\(x\\)"], "links": ["a&b"]}
    with pytest.raises(ValueError, match="probe did not run"):
        cp.parse_probe("<body></body>")


def test_problems_of_lists_every_kind(site):
    result = {"raw_tex": ["\\(x\\)"], "unrendered": ["E=mc^2"], "math_errors": ["Undefined"],
              "noise": ["WARNING:root:x"], "overflow": ["pre 900 > 600: x"], "nan": ["pro"],
              "links": ["http://REFERENCE.md", "other.html", "other.html"]}
    found = cp.problems_of(result, site / "good.html", site)
    assert [p.split(":")[0] for p in found] == [
        "raw TeX", "math not typeset", "MathJax error", "library noise in an output",
        "wider than the column", "NaN shown in a table (show '-')",
        "link to a bare file name, not a site"]


@pytest.mark.skipif(cp.find_chromium() is None, reason="chromium is not installed")
def test_chromium_sees_what_a_reader_sees(site):
    report = cp.check_site(site, widths=(1280,), jobs=2)
    assert report["good.html @ 1280px"] == []
    assert report["other.html @ 1280px"] == []
    bad = report["bad.html @ 1280px"]
    kinds = sorted({p.split(":")[0] for p in bad})
    assert kinds == ["NaN shown in a table (show '-')", "broken anchor", "broken local link",
                     "library noise in an output",
                     "link to a bare file name, not a site", "raw TeX", "wider than the column"]
    wide = [p for p in bad if p.startswith("wider")]
    assert any(p.startswith("wider than the column: pre ") for p in wide)
    assert any("img right edge" in p for p in wide)
