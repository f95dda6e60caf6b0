"""Every table of README.md and docs/*.md is printed from a committed benchmark result:
benchmarks/readme_tables.py prints it again from benchmarks/results/ and it must be the
same, character for character (results/history/ holds earlier machines' results and does
not count)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import benchmark_module

ROOT = Path(__file__).resolve().parent.parent


def _tables_module():
    return benchmark_module("readme_tables")


NUMBER = re.compile(r"^\*?(-?\d[\d,]*(?:\.\d+)?)\s*(%|×|x|MB|ms|min|s)?\*?$")


def _table_lines_outside_blocks(text: str, tables) -> list[str]:
    """Table rows with a figure in a cell (a number, perhaps with its unit) outside the generated blocks."""
    outside = tables.BLOCK.sub("", text)
    return [line for line in outside.splitlines() if line.startswith("|")
            and any(NUMBER.match(cell.strip()) for cell in line.strip().strip("|").split("|")[1:])]


def test_every_generated_table_equals_the_one_printed_from_the_results():
    tables = _tables_module()
    for page in tables.PAGES:
        text = (ROOT / page).read_text()
        for name, written in tables.blocks(text):
            assert written == tables.render(name), f"{page}: table {name} differs from its result; run " \
                                                   "python benchmarks/readme_tables.py --write"


def test_no_table_of_figures_is_written_by_hand():
    tables = _tables_module()
    for page in tables.PAGES:
        assert _table_lines_outside_blocks((ROOT / page).read_text(), tables) == [], page


def test_the_readme_shows_one_headline_table_per_task():
    tables = _tables_module()
    names = [name for name, _ in tables.blocks((ROOT / "README.md").read_text())]
    assert names == ["demo", "images", "lm_demo"]
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_the_check_sees_a_changed_figure():
    tables = _tables_module()
    page = f"<!-- table: demo -->\n{tables.render('demo')}\n<!-- /table -->"
    (name, written), = tables.blocks(page)
    assert written == tables.render(name)
    changed = page.replace("96.2%", "96.3%", 1)
    assert changed != page and tables.blocks(changed)[0][1] != tables.render("demo")
    assert _table_lines_outside_blocks("| a | 1.5 |\n" + page, tables) == ["| a | 1.5 |"]
