"""Book hygiene: every chapter is listed, stored clean, and points at the one repository URL."""
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
REPO = CONFIG["repository"]["url"].rstrip("/")
GITHUB_PATH = REPO.split("github.com/")[1]
TOC_FILES = [TOC["root"]] + [c["file"] for c in TOC["chapters"]]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CLEAN_METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}}


def _load(path):
    return json.loads(path.read_text())


def test_every_chapter_in_the_toc_exists_and_every_notebook_is_listed():
    for entry in TOC_FILES:
        matches = list(ROOT.glob(entry + ".*"))
        assert matches, f"_toc.yml lists {entry} but no such file exists"
    listed = {str(Path(f)) for f in TOC_FILES}
    for nb in NOTEBOOKS:
        assert str(nb.relative_to(ROOT).with_suffix("")) in listed, f"{nb.name} is not in _toc.yml"
    assert len(NOTEBOOKS) == 9


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean(path):
    nb = _load(path)
    assert nb["metadata"] == CLEAN_METADATA, f"{path.name}: notebook metadata is not clean"
    for i, cell in enumerate(nb["cells"]):
        assert set(cell.get("metadata", {})) <= {"tags"}, f"{path.name} cell {i}: stray metadata"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{path.name} cell {i} is stored with outputs: clear them before committing"
        if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):  # nbformat warns, then will refuse
            assert cell.get("id"), f"{path.name} cell {i} has no id (nbformat 4.5 needs one)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_shape(path):
    nb = _load(path)
    cells = nb["cells"]
    first = "".join(cells[0]["source"])
    badge = f"https://colab.research.google.com/github/{GITHUB_PATH}/blob/main/book/{path.name}"
    assert first.startswith("# Chapter"), f"{path.name}: first cell must be the chapter title"
    assert badge in first, f"{path.name}: Colab badge must point at {badge} (_config.yml repository.url)"
    install = "".join(cells[1]["source"])
    assert '"google.colab" in sys.modules' in install and f"git+{REPO}" in install
    sources = ["".join(c["source"]) for c in cells]
    assert any("chapter_setup(" in s for s in sources if s), f"{path.name}: no chapter_setup() cell"
    headings = [s for s in sources if s.startswith("## ")]
    for wanted in ("## Summary", "## Exercises"):
        assert any(h.startswith(wanted) for h in headings), f"{path.name}: missing {wanted}"


def test_introduction_mentions_the_presets_and_datasets():
    text = (ROOT / (TOC["root"] + ".md")).read_text()
    for word in ("tiny", "small", "paper", "MVTec AD", "PROMPTMOE_DATA", "quick mode"):
        assert word in text
    assert re.search(r"colab", text, re.I)


def test_the_book_never_points_at_files_outside_this_repository():
    """REFERENCE.md lives beside the repository, not in it: a link to it is a dead link that
    Sphinx renders as http://REFERENCE.md. Chapters link to Appendix A instead."""
    pages = NOTEBOOKS + sorted((ROOT / "book").glob("*.md"))
    bad = [p.name for p in pages if "REFERENCE.md" in p.read_text() and p.name != "AUTHORING.md"]
    assert not bad, f"{bad} mention REFERENCE.md: link to appendix_design_decisions.md instead"
