"""Which names in a folder are symbolic links, asked for many names of a few folders.

Reading a table of 100,000 images, or checking 100,000 output names, asks this once per
name: an lstat each was a tenth of `validate`'s time. A folder asked about often is listed
once instead (its entries' types come with the listing, no call per name); one asked about
rarely, or so large that listing it would cost more than the lookups it saves, is not.
"""

from __future__ import annotations

import os

# Lookups in a folder before it may be listed, and how many bytes of directory (its
# st_size: about 16-32 per entry on ext4, XFS, btrfs and tmpfs) a lookup pays for.
_LIST_AFTER = 256
_BYTES_PER_LOOKUP = 1024


class LinkLookup:
    """A snapshot taken for one pass over a manifest: a link made in a listed folder after
    it was listed is not seen (what is later read or written is checked afresh)."""

    def __init__(self) -> None:
        self._asked: dict[str, int] = {}  # folder -> lookups so far
        self._listed: dict[str, frozenset[str]] = {}  # folder -> the links in it

    def is_link(self, folder: str, name: str) -> bool:
        """Whether `folder/name` is a symbolic link (False if it is not there)."""
        links = self._listed.get(folder)
        if links is not None:
            return name in links
        asked = self._asked[folder] = self._asked.get(folder, 0) + 1
        if asked >= _LIST_AFTER and asked & (asked - 1) == 0:  # at 256, 512, 1024...
            listed = _links_in(folder, asked * _BYTES_PER_LOOKUP)
            if listed is not None:
                self._listed[folder] = listed
                return name in listed
        return os.path.islink(os.path.join(folder, name))  # noqa: PTH114, PTH118 (per name)


def _links_in(folder: str, budget: int) -> frozenset[str] | None:
    """The names of the links in `folder`; None if it is larger than `budget` bytes or
    cannot be listed (the lookups go on one by one)."""
    try:
        if os.stat(folder).st_size > budget:  # noqa: PTH116
            return None
        with os.scandir(folder) as entries:
            return frozenset(entry.name for entry in entries if entry.is_symlink())
    except FileNotFoundError:  # not made yet (an output folder): no link in it
        return frozenset()
    except OSError:
        return None
