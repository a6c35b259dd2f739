"""`LinkLookup`: a folder asked about for many names is listed once, with the same answers
an lstat per name gives; one too large to list pays off is never listed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.files import links
from runner.files.links import LinkLookup
from runner.manifest.tables import CellReader


def folder_with_links(root: Path, files: int, linked: set[int]) -> list[str]:
    """`files` names in `root`: those in `linked` are links (to a file outside), the rest
    plain files; the last few names are not there at all."""
    outside = root.parent / f"{root.name}-target.png"
    outside.write_bytes(b"x")
    root.mkdir()
    names = []
    for i in range(files):
        name = f"{i:05d}.png"
        if i in linked:
            (root / name).symlink_to(outside)
        else:
            (root / name).write_bytes(b"x")
        names.append(name)
    return [*names, "missing-1.png", "missing-2.png"]


def counted_lstats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.path.islink

    def islink(path: str) -> bool:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(links.os.path, "islink", islink)
    return seen


def test_a_folder_asked_about_often_is_listed_once_with_the_same_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "img"
    names = folder_with_links(folder, 1200, linked={3, 700, 1199})
    truth = [(folder / name).is_symlink() for name in names]
    lstats = counted_lstats(monkeypatch)
    lookup = LinkLookup()

    answers = [lookup.is_link(str(folder), name) for name in names]

    assert answers == truth and sum(answers) == 3
    assert len(lstats) == 255  # then the listing answered the other 947


def test_a_folder_too_large_to_list_for_what_is_asked_is_looked_up_name_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "img"
    names = folder_with_links(folder, 600, linked={10, 599})
    truth = [(folder / name).is_symlink() for name in names]
    monkeypatch.setattr(links, "_BYTES_PER_LOOKUP", 0)  # no listing is worth it
    lstats = counted_lstats(monkeypatch)
    lookup = LinkLookup()

    answers = [lookup.is_link(str(folder), name) for name in names]

    assert answers == truth
    assert len(lstats) == len(names)


def test_a_table_of_many_rows_follows_each_linked_image_to_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    names = folder_with_links(folder, 400, linked={0, 399})
    cells = CellReader(tmp_path / "t.csv")

    paths = [cells.image(f"img/{name}", row, "file") for row, name in enumerate(names)]

    target = (tmp_path / "img-target.png").resolve()
    assert paths[0] == target and paths[399] == target  # the first row and one after listing
    assert paths[1] == folder.resolve() / "00001.png" and paths[398] == folder / "00398.png"
    assert paths[-1] == folder.resolve() / "missing-2.png"
