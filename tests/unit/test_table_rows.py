"""A CSV or TSV table's rows, read as csv.DictReader reads them (what `jobs_from` has always
meant by a row), whatever the file's quirks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ManifestError
from runner.manifest.tables import read_rows

QUIRKY = (
    "\ufefffile,prompt,file,extra\r\n"  # a BOM, and `file` twice: the last one counts
    "a.png,make it blue,b.png,x\r\n"
    "\r\n"  # a blank line is no row
    'c.png,"two\nlines, and a ""quote""",d.png\r\n'  # the row's last cell is missing
    "e.png,,f.png,x,surplus,cells\r\n"  # an empty cell is no value; surplus ignored
    "g.png\r\n"  # a short row
    ",é 日本,,\r\n"
)


def dict_reader_rows(path: Path, needed: list[str], delimiter: str) -> list[tuple[int, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream, delimiter=delimiter)
        return [
            (n, {k: (v if v != "" else None) for k, v in row.items() if k in needed})
            for n, row in enumerate(reader, start=1)
        ]


@pytest.mark.parametrize("delimiter", [",", "\t"])
@pytest.mark.parametrize("needed", [["file", "prompt"], ["prompt"], ["extra", "file", "prompt"]])
def test_rows_are_what_a_dict_reader_reads(
    tmp_path: Path, delimiter: str, needed: list[str]
) -> None:
    path = tmp_path / ("t.csv" if delimiter == "," else "t.tsv")
    text = QUIRKY if delimiter == "," else QUIRKY.replace(",", "\t")
    path.write_text(text, encoding="utf-8", newline="")

    rows = list(read_rows(path, needed))

    expected = dict_reader_rows(path, needed, delimiter)
    assert rows == expected
    assert [list(row) for _, row in rows] == [list(row) for _, row in expected]  # column order
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5]
    if "file" in needed:
        assert [row["file"] for _, row in rows] == ["b.png", "d.png", "f.png", None, None]


def test_a_table_without_a_needed_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("file,prompt\na.png,x\n", encoding="utf-8")

    with pytest.raises(ManifestError, match="no column 'mask'"):
        list(read_rows(path, ["file", "mask"]))
