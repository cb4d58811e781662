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
CHAPTERS = [nb for nb in NOTEBOOKS if nb.name[0].isdigit()]  # 02_... to 10_...
APPENDICES = [nb for nb in NOTEBOOKS if nb.name.startswith("appendix_")]
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
    assert len(CHAPTERS) == 9 and len(CHAPTERS) + len(APPENDICES) == len(NOTEBOOKS)


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
    kind = "# Appendix" if path in APPENDICES else "# Chapter"
    assert first.startswith(kind), f"{path.name}: first cell must be the title ({kind} ...)"
    assert badge in first, f"{path.name}: Colab badge must point at {badge} (_config.yml repository.url)"
    install = "".join(cells[1]["source"])
    assert '"google.colab" in sys.modules' in install and f"git+{REPO}" in install
    sources = ["".join(c["source"]) for c in cells]
    assert any("chapter_setup(" in s for s in sources if s), f"{path.name}: no chapter_setup() cell"
    headings = [s for s in sources if s.startswith("## ")]
    for wanted in ("## Summary",) + (() if path in APPENDICES else ("## Exercises",)):
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


# ------------------------------------------------------------------ honest reading times
# Reading: prose at 180 words a minute and code at 12 lines a minute, counted in the notebook
# (the exercises cell is working time). Working: running and changing the code, 5 minutes plus
# one per 20 lines of code; each exercise about 15 minutes in quick mode. Rounded to 5 minutes.
# The introduction explains this and adds the chapters up for a course.
WORDS_PER_MIN, CODE_LINES_PER_MIN, CODE_LINES_PER_WORK_MIN, EXERCISE_MIN = 180, 12, 20, 15


def _round5(minutes: float) -> int:
    return max(5, int(5 * round(minutes / 5)))


def estimate_minutes(nb: dict) -> dict:
    """Reading and working minutes of a notebook (dict as stored) by the formula above."""
    words = code = n_exercises = 0
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "code":
            code += sum(1 for line in text.split("\n") if line.strip() and not line.strip().startswith("#"))
        elif text.startswith("## Exercises"):
            n_exercises = len(re.findall(r"^\d+\. ", text.split("```")[0], re.M))
        else:
            words += len(re.findall(r"\w+", text))
    work_code = _round5(5 + code / CODE_LINES_PER_WORK_MIN)
    exercises = EXERCISE_MIN * n_exercises
    return {"read": _round5(words / WORDS_PER_MIN + code / CODE_LINES_PER_MIN), "code": work_code,
            "n_exercises": n_exercises, "exercises": exercises, "work": work_code + exercises}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_gives_reading_and_working_time(path):
    nb = _load(path)
    first = "".join(nb["cells"][0]["source"]).replace("\n", " ")
    t = estimate_minutes(nb)
    read = re.search(r"about (\d+) min to read", first)
    work = re.search(r"about (\d+) min to (?:work through|run and change)", first)
    assert read and work, f"{path.name}: the header must say 'about N min to read; about M min to work through'"
    # within 5 minutes or 20%: small edits need not rewrite the header, a new section does
    for said, want in ((int(read.group(1)), t["read"]), (int(work.group(1)), t["work"])):
        assert abs(said - want) <= max(5, 0.2 * want), f"{path.name}: header says {said} min, the text gives {want}"


def test_introduction_adds_the_times_up():
    text = (ROOT / (TOC["root"] + ".md")).read_text()
    rows = re.findall(r"^\| (\d+|C) [^|]*\|[^|]*\| (\d+) min \| (\d+) min \|", text, re.M)
    assert len(rows) == 10, rows  # chapters 2-10 and Appendix C
    total = re.search(r"^\| \*\*a course\*\* \|[^|]*\| \*\*(\d+) min\*\* \| \*\*(\d+) min\*\* \|", text, re.M)
    assert total, "the table needs a '**a course**' row with the two totals"
    assert int(total.group(1)) == sum(int(r[1]) for r in rows)
    assert int(total.group(2)) == sum(int(r[2]) for r in rows)
    for key, read, work in rows:
        name = ("appendix_engineering.ipynb" if key == "C"
                else next(p.name for p in CHAPTERS if int(p.name.split("_")[0]) == int(key)))
        nb = _load(ROOT / "book" / name)
        head = "".join(nb["cells"][0]["source"]).replace("\n", " ")
        said = re.search(r"about (\d+) min to read; about (\d+) min to", head)
        if said:  # chapter 7's header comes with its own branch
            assert (int(read), int(work)) == (int(said.group(1)), int(said.group(2))), name
