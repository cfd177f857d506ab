"""scripts/make_results.py writes only its own marked sections of docs/RESULTS.md: the rest of the
page (hand-written sections, scripts/pareto.py's block) is left byte for byte (no benchmark runs here)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("make_results", os.path.join(ROOT, "scripts", "make_results.py"))
make_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_results)

PAGE = (
    "# Results\n\nWhere each section comes from: ...\n\n## The demo\n\nhand-written\n\n"
    f"{make_results.MAIN_BEGIN}\nold sections 1-3\n{make_results.MAIN_END}\n\n"
    f"{make_results.GOALS_BEGIN}\nold goals\n{make_results.GOALS_END}\n"
    "<!-- gpu: begin -->\nGPU, hand-written\n<!-- gpu: end -->\n\n"
    "<!-- PARETO:BEGIN (scripts/pareto.py) -->\nMAC budgets\n<!-- PARETO:END -->\n"
)


def _sections():
    return make_results.main_sections({}, [], [], [], "cpu: fake (2 cores)", "2027-01-01 00:00 UTC")


def test_main_sections_replace_only_their_block(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text(PAGE)
    make_results.write_block(str(page), make_results.MAIN_BEGIN, make_results.MAIN_END, _sections())
    text = page.read_text()
    head, rest = PAGE.split(make_results.MAIN_BEGIN)
    tail = rest.split(make_results.MAIN_END, 1)[1]
    assert text.startswith(head) and text.endswith(tail)  # everything outside the block, unchanged
    assert "old sections 1-3" not in text and text.count(make_results.MAIN_BEGIN) == 1
    block = text[len(head) : len(text) - len(tail)]
    assert "Sections 1-3: written by `python scripts/make_results.py` on 2027-01-01 00:00 UTC" in block
    assert "cpu: fake (2 cores)" in block and "## 3. The paper's results" in block
    # Again: the same page (idempotent).
    make_results.write_block(str(page), make_results.MAIN_BEGIN, make_results.MAIN_END, _sections())
    assert page.read_text() == text


def test_a_page_without_the_markers_keeps_everything_and_gets_the_block_appended(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# Results\n\nsomeone's section\n")
    make_results.write_block(str(page), make_results.MAIN_BEGIN, make_results.MAIN_END, _sections())
    text = page.read_text()
    assert text.startswith("# Results\n\nsomeone's section\n\n" + make_results.MAIN_BEGIN)
    assert text.rstrip().endswith(make_results.MAIN_END)
    missing = tmp_path / "new" / "RESULTS.md"
    make_results.write_block(str(missing), make_results.MAIN_BEGIN, make_results.MAIN_END, _sections())
    assert missing.read_text().startswith("# Results\n\n" + make_results.MAIN_BEGIN)


def test_goals_replace_only_their_block(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text(PAGE)
    make_results.write_block(
        str(page),
        make_results.GOALS_BEGIN,
        make_results.GOALS_END,
        "\n".join(["x", "new goals", "y"]).join([make_results.GOALS_BEGIN + "\n", "\n" + make_results.GOALS_END]),
    )
    text = page.read_text()
    assert "new goals" in text and "old goals" not in text
    assert text == PAGE.replace("old goals", "x\nnew goals\ny")
