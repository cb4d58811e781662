"""Look at the built book the way a reader does: headless Chromium, network blocked.

Usage (after ``make book``)::

    python tools/check_pages.py [_build/html] [--widths 1280 1920] [--screenshots DIR]

For every chapter page and every window width, a copy of the page with a small probe script is
opened in headless Chromium (``--dump-dom`` after ``--virtual-time-budget``, so MathJax and the
theme's scripts have run). The probe writes what it measured into the DOM as JSON; this script
reads it back and fails (exit status 1) on:

* raw TeX left in the visible text (``\\(``, ``\\[``, ``$$``, ``\\frac`` ...) or math that MathJax did
  not typeset (a ``.math`` element without ``mjx-container``, or a MathJax error);
* broken local links (missing file or missing ``#anchor``) and links to bare file names that the
  Markdown parser turned into domains (``http://REFERENCE.md``);
* ``WARNING``, ``Traceback`` or ``...Warning:`` in a cell's output, and ``NaN`` in a table cell;
* code or output wider than its column (``scrollWidth > clientWidth`` of a ``pre``), a code
  column too narrow for a 100-character line (measured in the page's own code font), an image
  wider than the article, or a table that sticks out of the column without a scrolling container.

The network is blocked with ``--host-resolver-rules`` and a dead proxy: anything loaded from a CDN
fails, exactly as it does for an offline reader.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

MARKER = "pm-page-check"
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
FILE_SUFFIXES = ("md", "py", "ipynb", "txt", "yml", "yaml", "csv", "json", "toml", "cfg", "sh",
                 "rst", "pt", "pth", "png", "jpg")
BARE_FILE_HOST = re.compile(r"\.(%s)$" % "|".join(FILE_SUFFIXES), re.IGNORECASE)
OUTPUT_NOISE = re.compile(r"\bWARNING\b|Traceback \(most recent call last\)|\b\w*Warning:")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
                  "--proxy-server=127.0.0.1:9", "--allow-file-access-from-files"]

# Runs in the page after load (and after MathJax finished typesetting, if MathJax is there).
PROBE_JS = r"""
(function () {
  function clip(s) { return (s || "").replace(/\s+/g, " ").trim().slice(0, 100); }
  function scrolls(el, stop) {
    for (var e = el.parentElement; e && e !== stop; e = e.parentElement) {
      var o = getComputedStyle(e).overflowX;
      if ((o === "auto" || o === "scroll") && e.clientWidth <= stop.clientWidth + 1) return true;
    }
    return false;
  }
  function probe() {
    var r = {raw_tex: [], unrendered: [], math_errors: [], noise: [], overflow: [], links: []};
    var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), n;
    while ((n = walker.nextNode())) {
      var p = n.parentElement;
      if (!p || p.closest("script, style, pre, code, textarea, mjx-container, #pm-page-check"))
        continue;
      if (/\\\(|\\\)|\\\[|\\\]|\$\$|\\(frac|mathcal|mathbf|sum|left|right|hat|tau)\b/.test(n.nodeValue))
        r.raw_tex.push(clip(n.nodeValue));
    }
    document.querySelectorAll(".math").forEach(function (e) {
      if (!e.querySelector("mjx-container") && !e.closest("mjx-container"))
        r.unrendered.push(clip(e.textContent));
    });
    document.querySelectorAll("mjx-merror, [data-mjx-error]").forEach(function (e) {
      r.math_errors.push(clip(e.getAttribute("data-mjx-error") || e.textContent));
    });
    document.querySelectorAll(".cell_output").forEach(function (e) {
      var m = (e.innerText || "").match(/.*(\bWARNING\b|Traceback \(most recent call last\)|\b\w*Warning:).*/);
      if (m) r.noise.push(clip(m[0]));
    });
    r.nan = [];
    document.querySelectorAll("article td").forEach(function (e) {
      if (/^(NaN|nan)$/.test(e.textContent.trim()))
        r.nan.push(clip((e.closest("table").querySelector("th") || e).textContent));
    });
    var article = document.querySelector("article") || document.body;
    var right = article.getBoundingClientRect().right;
    article.querySelectorAll("pre").forEach(function (e) {
      if (e.scrollWidth > e.clientWidth + 1)
        r.overflow.push("pre " + e.scrollWidth + " > " + e.clientWidth + ": " + clip(e.textContent));
    });
    var code = article.querySelector("div.highlight pre");
    if (code) {  // does a 100-character line fit the code column without wrapping?
      var cs = getComputedStyle(code), probe100 = document.createElement("span");
      probe100.style.cssText = "position:absolute; display:inline-block; white-space:pre; " +
        "font-family:" + cs.fontFamily + "; font-size:" + cs.fontSize + "; letter-spacing:" +
        cs.letterSpacing;
      probe100.textContent = "x".repeat(100);
      document.body.appendChild(probe100);
      var need = probe100.getBoundingClientRect().width;
      probe100.remove();
      var room = code.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
      if (need > room + 0.5)
        r.overflow.push("100-character code line needs " + Math.round(need) + " px, the code column has " +
                        Math.round(room) + " px");
    }
    article.querySelectorAll("img, table").forEach(function (e) {
      var b = e.getBoundingClientRect();
      if (b.width > 0 && b.right > right + 1 && !scrolls(e, article))
        r.overflow.push(e.tagName.toLowerCase() + " right edge " + Math.round(b.right) +
                        " > column " + Math.round(right) + ": " + clip(e.getAttribute("alt") || e.textContent));
    });
    document.querySelectorAll("a[href]").forEach(function (a) {
      r.links.push(a.getAttribute("href"));
    });
    r.width = window.innerWidth;
    var out = document.createElement("pre");
    out.id = "pm-page-check";
    out.textContent = JSON.stringify(r);
    document.body.appendChild(out);
  }
  window.addEventListener("load", function () {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise)
      MathJax.startup.promise.then(probe, probe);
    else probe();
  });
})();
"""


def find_chromium() -> Optional[str]:
    """The Chromium binary: $CHROMIUM, else ``chromium`` / ``chromium-browser`` on PATH."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def chapter_pages(site: Path) -> List[Path]:
    """Every content page of the built site (index redirects and Sphinx's own pages left out)."""
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"{site}/index.html not found: build the book first (make book)")
    pages = []
    for page in sorted(site.rglob("*.html")):
        rel = page.relative_to(site)
        if rel.parts[0].startswith("_") or rel.name in SKIP_PAGES or page.name.startswith("_check_"):
            continue
        if rel.name == "index.html" and "http-equiv=\"Refresh\"" in page.read_text(errors="ignore"):
            continue  # jupyter-book's redirect to the root chapter
        pages.append(page)
    return pages


def link_problem(page: Path, href: str, site: Path) -> Optional[str]:
    """Why ``href`` (found on ``page``) is broken, or None when it is fine."""
    parts = urlsplit(href)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if BARE_FILE_HOST.search(host):
            return f"link to a bare file name, not a site: {href}"
        return None
    if parts.scheme in ("mailto", "javascript", "data") or href.startswith("//"):
        return None
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if parts.path.endswith("/"):
        target = target / "index.html"
    if not target.exists():
        return f"broken local link: {href} ({target} does not exist)"
    if parts.fragment and target.suffix == ".html":
        text = target.read_text(errors="ignore")
        frag = re.escape(unquote(parts.fragment))
        if not re.search(r"\bid=[\"']%s[\"']" % frag, text):
            return f"broken anchor: {href} (no id {parts.fragment!r} in {target.name})"
    return None


def parse_probe(dom: str) -> Dict:
    """The probe's JSON from a dumped DOM."""
    m = re.search(r'<pre id="%s"[^>]*>(.*?)</pre>' % MARKER, dom, re.DOTALL)
    if m is None:
        raise ValueError("the page-check probe did not run (no #%s in the dumped DOM)" % MARKER)
    return json.loads(html.unescape(m.group(1)))


def problems_of(result: Dict, page: Path, site: Path) -> List[str]:
    """Human-readable problems of one probed page at one width."""
    out = [f"raw TeX: {t}" for t in result.get("raw_tex", [])]
    out += [f"math not typeset: {t}" for t in result.get("unrendered", [])]
    out += [f"MathJax error: {t}" for t in result.get("math_errors", [])]
    out += [f"library noise in an output: {t}" for t in result.get("noise", [])]
    out += [f"wider than the column: {t}" for t in result.get("overflow", [])]
    out += [f"NaN shown in a table (show '-'): {t}" for t in sorted(set(result.get("nan", [])))]
    for href in sorted(set(result.get("links", []))):
        why = link_problem(page, href, site)
        if why:
            out.append(why)
    return out


def probe_page(chromium: str, page: Path, width: int, screenshot: Optional[Path] = None,
               budget_ms: int = 20000, timeout: float = 120) -> Dict:
    """Open ``page`` at ``width`` px with the probe injected; return the probe's results."""
    text = page.read_text(errors="ignore")
    probe = "<script>%s</script>" % PROBE_JS
    text = text.replace("</body>", probe + "</body>") if "</body>" in text else text + probe
    copy = page.with_name(f"_check_{width}_{page.name}")  # same folder: relative links still work
    copy.write_text(text)
    try:
        with tempfile.TemporaryDirectory(prefix="pm-chromium-") as profile:
            cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--window-size={width},1200", f"--virtual-time-budget={budget_ms}"]
            done = subprocess.run(cmd + ["--dump-dom", copy.as_uri()], capture_output=True,
                                  text=True, timeout=timeout)
            if screenshot is not None:
                subprocess.run(cmd + [f"--screenshot={screenshot}", page.as_uri()],
                               capture_output=True, timeout=timeout)
        return parse_probe(done.stdout)
    finally:
        copy.unlink(missing_ok=True)


def check_site(site: Path, widths=(1280, 1920), screenshots: Optional[Path] = None,
               chromium: Optional[str] = None, jobs: int = 2) -> Dict[str, List[str]]:
    """``{"page @ width": [problems]}`` for every page and width (empty lists when clean)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium (or set $CHROMIUM)")
    site = site.resolve()
    pages = chapter_pages(site)
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    tasks = [(p, w) for p in pages for w in widths]

    def one(task):
        page, width = task
        shot = screenshots / f"{page.stem}_{width}.png" if screenshots is not None else None
        try:
            return problems_of(probe_page(chromium, page, width, shot), page, site)
        except (ValueError, subprocess.TimeoutExpired) as err:
            return [f"could not probe the page: {err}"]

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        found = list(pool.map(one, tasks))
    return {f"{p.relative_to(site)} @ {w}px": f for (p, w), f in zip(tasks, found)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("site", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--widths", nargs="+", type=int, default=[1280, 1920])
    parser.add_argument("--screenshots", type=Path, default=None, help="also save a PNG per page")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        report = check_site(args.site, args.widths, args.screenshots, jobs=args.jobs)
    except FileNotFoundError as err:
        print(f"page check: {err}", file=sys.stderr)
        return 2
    bad = 0
    for where, problems in report.items():
        print(f"{where}: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
        for problem in problems:
            print("   ", problem)
        bad += len(problems)
    print(f"page check: {len(report)} page views, {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
