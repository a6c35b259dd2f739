"""A batch run as one static HTML page: totals, filters, then before/after thumbnails per job.

The page has to open from disk, offline, years later and on another machine, so what it
needs to be read is inside the file: CSS and a small script inline, images as `data:` URIs
of small WebP (or JPEG) thumbnails. Only the enlarged view is not: it links to the full-size
pictures on disk, because embedding them would make a 300-job report hundreds of megabytes.
A mailed report therefore shows everything but the enlargements, and a link that does not
resolve shows MISSING_TEXT. Prompts, error messages and file names come from users and
providers, so every piece of text is escaped, every link percent-encoded, and a Content-
Security-Policy lets only our own (hashed) style and script run, as a second line of defence.

`render_html` is pure; `write_report` makes the thumbnails in a thread pool (Pillow
releases the GIL while decoding, resizing and encoding) and writes the page atomically.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageFilter, ImageOps, features

from runner.errors import OutputError
from runner.files.carried import read_carried
from runner.files.outputs import write_atomic
from runner.manifest.tables import carried_source
from runner.money import format_usd
from runner.records import JobState, ObjectURL, OutputPlace, short_key

# The outline of the edited area: magenta is rare in photographs, so it stands out.
OUTLINE_RGB = (255, 0, 255)
QUALITY = 70
# Text shown in place of an image file that is missing or unreadable (tests look for it).
MISSING_TEXT = "missing"
# Where `runner report` puts the page unless told: beside the manifest, so each batch
# keeps its own report and the links to its pictures stay short and relative.
REPORT_NAME = "report.html"
# A prompt shared by at least this many jobs of a section is shown once, as the heading of
# their group; a prompt of one job stays on its card (a heading per card would be noise).
MIN_GROUP = 2

# WebP is about a third smaller than JPEG at the same quality for thumbnails like these;
# a Pillow built without libwebp still makes a working page with JPEG.
_FORMAT, _MIME = ("WEBP", "image/webp") if features.check("webp") else ("JPEG", "image/jpeg")
# Order of the counts at the top: what needs a look first.
_STATE_ORDER = (
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.RUNNING,
    JobState.PENDING,
    JobState.SUCCEEDED,
)
_KNOWN_STATES = frozenset(s.value for s in JobState)
# Anything Pillow raises for a file it cannot turn into a picture: absent, unreadable,
# not an image, truncated, or too many pixels. One bad file must not sink the report.
_UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
    OutputError,  # an object the store would not give
)
# Reads an output kept in an object store (ObjectOutputs.read); OutputError if it cannot.
ReadObject = Callable[[ObjectURL], bytes]


def _no_object_store(where: ObjectURL) -> bytes:
    raise OutputError(f"{where}: no object store client given")


ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ReportJob:
    key: str
    image: Path  # the input image path
    mask: Path | None
    prompt: str
    provider: str
    model: str
    state: str  # pending|running|succeeded|failed|cancelled
    attempts: int
    cost_usd: float | None
    error: str | None  # reason for failed jobs
    # Output images (may be missing): files, or objects in a store (see object_store.py).
    outputs: tuple[OutputPlace, ...]


@dataclass(frozen=True, slots=True)
class ReportTotals:
    counts: Mapping[str, int]  # per state
    cost_usd: float
    manifest: str
    generated_at: datetime  # shown in the local zone of the machine that makes the page
    # The manifest's folder (absolute): cards name their input's folder relative to it, and
    # pictures inside it are linked relatively when the page is inside it too.
    folder: Path | None = None
    # When the page shows a sample of a large batch (see `sample_for_report`): which rule.
    sampled: str | None = None


@dataclass(frozen=True, slots=True)
class ReportStats:
    jobs: int
    thumbnails: int  # <img> elements in the page
    bytes_written: int
    missing_images: int  # references to images, masks or outputs that could not be read


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """An encoded thumbnail, ready to become a data: URI."""

    mime: str
    data: bytes
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class JobThumbnails:
    """What one job shows; None stands for a file that could not be read."""

    before: Thumbnail | None
    outputs: tuple[Thumbnail | None, ...]
    mask_missing: bool = False  # the job has a mask but it could not be read


# Cards a report shows unless asked for all: a page of a few thousand thumbnails still opens
# quickly; one of 100,000 (a data: URI each) would be gigabytes.
REPORT_MAX_JOBS = 2000


def sample_for_report(
    jobs: Sequence[ReportJob], limit: int | None = REPORT_MAX_JOBS
) -> tuple[list[ReportJob], str | None]:
    """The jobs the page shows, in manifest order, and the rule when not all of them: every
    failed job first (they need a look), then an even sample of the others: every k-th."""
    if limit is None or len(jobs) <= limit:
        return list(jobs), None
    failed = [i for i, job in enumerate(jobs) if job.state == JobState.FAILED][:limit]
    chosen = set(failed)
    others = [i for i in range(len(jobs)) if i not in chosen]
    room = limit - len(chosen)
    step = max(1, -(-len(others) // room)) if room > 0 else 0
    if step:
        chosen.update(others[::step][:room])
    kept = [jobs[i] for i in sorted(chosen)]
    rule = (
        f"showing {len(kept):,} of {len(jobs):,} jobs: every failed job ({len(failed):,}), then "
        + (f"every {_ordinal(step)} other job" if step else "no others")
        + "; `runner report --all` shows every job"
    )
    return kept, rule


def _ordinal(n: int) -> str:
    if n == 1:
        return "one"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def default_output(manifest: Path) -> Path:
    """Where the report of `manifest` goes unless the user says otherwise."""
    return manifest.parent / REPORT_NAME


def manifest_folder(manifest: Path) -> Path:
    """The manifest's folder as the runner stores its pictures: resolved (symlinks
    followed), so folder labels compare like with like; as written if that fails."""
    try:
        return manifest.parent.resolve()
    except (RuntimeError, OSError):  # a symlink loop, an unreadable folder
        return Path(os.path.normpath(manifest.parent.absolute()))


def make_thumbnail(image: Path, thumb_px: int, mask: Path | None = None) -> Thumbnail | None:
    """A thumbnail of `image` at most `thumb_px` on its longer side, with the outline of
    `mask`'s edited area drawn over it; None if `image` cannot be read.

    An unreadable mask leaves the picture without an outline.
    """
    return _thumbnail_with_mask(image, mask, thumb_px)[0]


def folder_label(image: Path, base: Path | None) -> str:
    """The folder of `image` as the card and the folder filter show it: relative to `base`
    (the manifest's folder, "." for the folder itself), else the absolute folder."""
    folder = image.parent
    if base is not None and folder.is_relative_to(base):
        relative = folder.relative_to(base)
        return relative.as_posix() if relative.parts else "."
    return str(folder)


def file_link(target: Path, page_dir: Path | None, base: Path | None = None) -> str:
    """An href for the picture at `target`, as seen from a page in `page_dir`.

    Relative when the picture travels with the page: inside the page's folder, or inside the
    manifest's folder `base` with the page there too (a batch folder archived or moved as a
    whole keeps its links). Otherwise an absolute file: URI, so a page copied elsewhere on
    the same machine still finds the pictures. Either way percent-encoded: a file name may
    hold '#', '?', '%', quotes or '<'.
    """
    absolute = Path(os.path.normpath(target.absolute()))
    if page_dir is not None:
        shared = base if base is not None and page_dir.is_relative_to(base) else page_dir
        if absolute.is_relative_to(shared):
            try:
                relative = os.path.relpath(absolute, page_dir)
            except ValueError:  # another drive (Windows): no relative path exists
                pass
            else:
                # fsencode: a POSIX file name need not be valid UTF-8 (surrogate escapes).
                return quote(os.fsencode(Path(relative).as_posix()))
    return absolute.as_uri()


def render_html(
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    thumbnails: Sequence[JobThumbnails],
    *,
    thumb_px: int = 160,
    page_dir: Path | None = None,
) -> str:
    """The whole page; `thumbnails[i]` belongs to `jobs[i]`. Links to the full-size
    pictures are relative to `page_dir` (the page's absolute folder) where that makes
    sense, else absolute file: URIs (always, if `page_dir` is None)."""
    if len(thumbnails) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(thumbnails)} thumbnail sets")
    style = _STYLE.replace("THUMB", str(thumb_px)).replace("CARD", str(2 * thumb_px + 40))
    # img-src: the embedded thumbnails, and the full-size pictures the viewer loads from
    # disk on a click ('self' covers a page served from a web server with its pictures).
    csp = (
        "default-src 'none'; img-src data: file: 'self'; "
        f"style-src '{_sha256(style)}'; script-src '{_sha256(_SCRIPT)}'"
    )
    pairs = list(zip(jobs, thumbnails, strict=True))
    failed = [p for p in pairs if p[0].state == JobState.FAILED]
    # The rest keep manifest order, which is how people find a job they remember.
    others = [p for p in pairs if p[0].state != JobState.FAILED]
    card = _Cards(totals.folder, page_dir)

    e = _esc
    title = f"Batch report: {totals.manifest}"
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{e(csp)}">\n',
        f"<title>{e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n",
        _render_totals(totals, len(jobs)),
    ]
    if jobs:
        parts.append(_render_filters(jobs, totals.folder))
    if failed:
        parts.append(f'<section id="failed" class="jobs">\n<h2>Failed jobs ({len(failed)})</h2>\n')
        parts.extend(_render_groups(failed, card))
        parts.append("</section>\n")
    if others:
        heading = "Other jobs" if failed else "Jobs"
        parts.append(f'<section id="jobs" class="jobs">\n<h2>{heading} ({len(others)})</h2>\n')
        parts.extend(_render_groups(others, card))
        parts.append("</section>\n")
    if not jobs:
        parts.append('<p class="empty">No jobs.</p>\n')
    parts.append(_VIEWER)
    parts.append(f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    return "".join(parts)


def write_report(
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    path: Path,
    *,
    thumb_px: int = 160,
    workers: int = 2,
    on_progress: ProgressCallback | None = None,
    read_object: ReadObject = _no_object_store,
) -> ReportStats:
    """Make the thumbnails, render the page and put it at `path` whole or not at all.

    `on_progress(done, total)` is called in the calling thread with (0, total) first, then
    once per finished thumbnail: `total` counts distinct (picture, mask) pairs, which is
    where nearly all the time goes.
    """
    if thumb_px < 1:
        raise ValueError(f"thumb_px must be at least 1, got {thumb_px}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    # Many jobs often share one input (several prompts per picture), so each distinct
    # (picture, mask) is decoded once; the page still repeats its data: URI per job.
    requests: set[tuple[OutputPlace, Path | None]] = {(job.image, job.mask) for job in jobs}
    requests.update((out, None) for job in jobs for out in job.outputs)
    if on_progress is not None:
        on_progress(0, len(requests))
    done: dict[tuple[OutputPlace, Path | None], tuple[Thumbnail | None, bool]] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report") as pool:
        futures = {
            pool.submit(_thumbnail_with_mask, req[0], req[1], thumb_px, read_object): req
            for req in requests
        }
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            if on_progress is not None:
                on_progress(len(done), len(requests))

    thumbnails = [
        JobThumbnails(
            before=done[(job.image, job.mask)][0],
            outputs=tuple(done[(out, None)][0] for out in job.outputs),
            mask_missing=not done[(job.image, job.mask)][1],
        )
        for job in jobs
    ]
    # Lexically absolute, not resolved: the browser resolves relative links against the
    # path the page is opened by, which is the one the user gave (symlinks and all).
    page_dir = Path(os.path.normpath(path.parent.absolute()))
    page = render_html(jobs, totals, thumbnails, thumb_px=thumb_px, page_dir=page_dir)
    # "replace" only matters for lone surrogates, which no browser could show anyway.
    data = page.encode("utf-8", "replace")
    # A reader (or a browser reloading) never sees half a page; a failure keeps the old one.
    write_atomic(path, data)

    shown = missing = 0
    for thumbs in thumbnails:
        for thumb in (thumbs.before, *thumbs.outputs):
            if thumb is None:
                missing += 1
            else:
                shown += 1
        missing += thumbs.mask_missing
    return ReportStats(
        jobs=len(jobs), thumbnails=shown, bytes_written=len(data), missing_images=missing
    )


# --- thumbnails -------------------------------------------------------------------------


def _thumbnail_with_mask(
    image: OutputPlace,
    mask: Path | None,
    thumb_px: int,
    read_object: ReadObject = _no_object_store,
) -> tuple[Thumbnail | None, bool]:
    """The thumbnail (None if `image` is unreadable) and whether `mask` was usable."""
    try:
        if isinstance(image, ObjectURL):
            picture = _load_small(io.BytesIO(read_object(image)), thumb_px)
        else:
            picture = _load_small(image, thumb_px)
    except _UNREADABLE:
        # Still check the mask, so the page can say which of the two files is the problem.
        return None, mask is None or _readable(mask)
    mask_ok = True
    if mask is not None:
        try:
            picture = _draw_outline(picture, _edited_region(mask, picture.size))
        except _UNREADABLE:
            mask_ok = False
    return _encode(picture), mask_ok


def _load_small(path: Path | io.BytesIO, thumb_px: int) -> Image.Image:
    """The picture as viewers show it, at most `thumb_px` on its longer side, in RGB."""
    with Image.open(_source(path)) as im:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: several times faster for
        # photos, and the result is still at least thumb_px before the final resize.
        im.draft("RGB", (thumb_px, thumb_px))
        # Masks are drawn against the picture as viewers show it (the runner compares
        # the mask with the EXIF-rotated size too), so rotate before anything else.
        upright = ImageOps.exif_transpose(im)
    has_alpha = "A" in upright.getbands() or "transparency" in upright.info
    if upright.mode not in ("RGB", "RGBA"):
        # Palette and 1-bit images would be resized with NEAREST; 16-bit and float ones
        # have no direct route to RGB. Full colour first, then a proper LANCZOS resize.
        upright = upright.convert("RGBA" if has_alpha else "RGB")
    upright.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
    if upright.mode == "RGB":
        return upright
    # Thumbnails carry no alpha (smaller, and JPEG has none): show it over light grey.
    background = Image.new("RGBA", upright.size, (224, 224, 224, 255))
    return Image.alpha_composite(background, upright).convert("RGB")


def _edited_region(mask_path: Path, size: tuple[int, int]) -> Image.Image:
    """Mode "L" image of `size`: 255 where the mask says "edit here", 0 elsewhere.

    With alpha (OpenAI's convention), fully transparent pixels are the edited area; once
    shrunk, a thumbnail pixel counts if most of what it covers was transparent. A mask
    without alpha is read the way inpainting tools with grey masks do: white (light) means
    edit, black (dark) means keep. The runner itself refuses such masks before sending, so
    this only matters for jobs that failed pre-flight.
    """
    with Image.open(_source(mask_path)) as mask:
        if "A" in mask.getbands() or "transparency" in mask.info:
            # Palette transparency needs a conversion; a real alpha band is used as it is.
            has_band = "A" in mask.getbands()
            alpha = (mask if has_band else mask.convert("RGBA")).getchannel("A")
            # BOX averages every source pixel, so a hole narrower than the reduction
            # factor still shows up as a low alpha value instead of vanishing.
            small = alpha.resize(size, Image.Resampling.BOX)
            return small.point(lambda a: 255 if a < 128 else 0)
        grey = mask.convert("L").resize(size, Image.Resampling.BOX)
        return grey.point(lambda v: 255 if v >= 128 else 0)


def _draw_outline(picture: Image.Image, region: Image.Image) -> Image.Image:
    # FIND_EDGES leaves a one-pixel ring just inside the region; Pillow copies the
    # border rows as they are, so a region that touches the frame is closed by it.
    edges = region.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 0 else 0)
    if edges.getbbox() is None:
        return picture
    # Widen the ring to about 3 px: thin enough to keep the picture visible, thick enough
    # that lossy 4:2:0 chroma subsampling in WebP/JPEG does not wash the colour out.
    ring = edges.filter(ImageFilter.MaxFilter(3))
    picture.paste(OUTLINE_RGB, (0, 0), ring)  # our own fresh thumbnail, safe to change
    return picture


def _encode(picture: Image.Image) -> Thumbnail:
    buffer = io.BytesIO()
    picture.save(buffer, _FORMAT, quality=QUALITY)
    return Thumbnail(_MIME, buffer.getvalue(), picture.width, picture.height)


def _source(path: Path | io.BytesIO) -> Path | io.BytesIO:
    """A file, or the bytes a table carries for a locator (read from the table)."""
    if isinstance(path, Path) and (source := carried_source(path)) and not path.exists():
        return io.BytesIO(read_carried(source))
    return path


def _readable(path: Path) -> bool:
    try:
        with Image.open(_source(path)) as im:
            im.load()
    except _UNREADABLE:
        return False
    return True


# --- page --------------------------------------------------------------------------------

_Pair = tuple[ReportJob, JobThumbnails]


def _render_totals(totals: ReportTotals, job_count: int) -> str:
    e = _esc
    states = [s.value for s in _STATE_ORDER]
    states += sorted(s for s in totals.counts if s not in _KNOWN_STATES)
    counts = "".join(
        f'<li class="{_state_class(s)}"><span>{e(s)}</span> <b>{totals.counts.get(s, 0)}</b></li>'
        for s in states
    )
    # The reader's clock, not UTC: "made at 14:30" should mean what their wall clock said.
    # The offset stays, so the time is exact wherever the page is read.
    local = totals.generated_at.astimezone()
    when = local.isoformat(sep=" ", timespec="seconds")
    zone = local.tzname()
    shown = f"{when} ({zone})" if zone else when
    return (
        "<header>\n<h1>Batch report</h1>\n<dl>"
        f"<dt>Manifest</dt><dd>{e(totals.manifest)}</dd>"
        f'<dt>Generated</dt><dd><time datetime="{e(local.isoformat())}">{e(shown)}</time></dd>'
        f"<dt>Jobs</dt><dd>{sum(totals.counts.values()) if totals.sampled else job_count}</dd>"
        + (f'<dt>Shown</dt><dd class="sampled">{e(totals.sampled)}</dd>' if totals.sampled else "")
        + ""
        f'<dt>Total cost</dt><dd class="total-cost">{e(format_usd(totals.cost_usd, 4))}</dd>'
        f'</dl>\n<ul class="counts">{counts}</ul>\n</header>\n'
    )


def _render_filters(jobs: Sequence[ReportJob], base: Path | None) -> str:
    """The filter bar: hidden until the script shows it, since without the script (a mail
    reader, say) it could do nothing."""
    e = _esc
    states: dict[str, int] = {}
    folders: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
        label = folder_label(job.image, base)
        folders[label] = folders.get(label, 0) + 1
    order: list[str] = [s.value for s in _STATE_ORDER if s.value in states]
    order += sorted(s for s in states if s not in _KNOWN_STATES)
    state_options = "".join(f'<option value="{e(s)}">{e(s)} ({states[s]})</option>' for s in order)
    folder_options = "".join(
        f'<option value="{e(f)}">{e(f)} ({n})</option>' for f, n in sorted(folders.items())
    )
    return (
        '<div id="filters" class="filters" role="search" hidden>'
        '<label>State <select id="f-state"><option value="">all states</option>'
        f"{state_options}</select></label>"
        '<label>Folder <select id="f-folder"><option value="">all folders</option>'
        f"{folder_options}</select></label>"
        '<label class="text">Text <input id="f-text" type="search" autocomplete="off" '
        'placeholder="prompt, path or error"></label>'
        f'<output id="f-shown">{len(jobs)} jobs</output></div>\n'
        '<p id="f-none" class="empty" hidden>No job matches the filter.</p>\n'
    )


def _groups(pairs: Sequence[_Pair]) -> list[tuple[str | None, list[_Pair]]]:
    """Jobs by prompt, in order of each prompt's first job: (prompt, jobs) for a prompt
    shared by MIN_GROUP jobs or more; neighbouring one-job prompts together as (None, jobs)."""
    by_prompt: dict[str, list[_Pair]] = {}
    for pair in pairs:
        by_prompt.setdefault(pair[0].prompt, []).append(pair)
    runs: list[tuple[str | None, list[_Pair]]] = []
    for prompt, members in by_prompt.items():
        if len(members) >= MIN_GROUP:
            runs.append((prompt, members))
        elif runs and runs[-1][0] is None:
            runs[-1][1].extend(members)
        else:
            runs.append((None, list(members)))
    return runs


def _render_groups(pairs: Sequence[_Pair], card: _Cards) -> list[str]:
    e = _esc
    parts = []
    for prompt, members in _groups(pairs):
        parts.append('<div class="group">\n')
        if prompt is not None:
            heading = e(prompt) if prompt else '<span class="none">(no prompt)</span>'
            parts.append(
                f'<div class="group-head"><h3 class="prompt">{heading}</h3>'
                f'<span class="n">{len(members)} jobs</span></div>\n'
            )
        parts.append('<div class="grid">\n')
        parts.extend(
            card.render(job, thumbs, show_prompt=prompt is None) for job, thumbs in members
        )
        parts.append("</div>\n</div>\n")
    return parts


@dataclass(frozen=True, slots=True)
class _Cards:
    base: Path | None  # the manifest's folder
    page_dir: Path | None  # the page's folder

    def render(self, job: ReportJob, thumbs: JobThumbnails, *, show_prompt: bool) -> str:
        e = _esc
        reason = job.error
        if not reason and job.state == JobState.FAILED:
            reason = "(no reason recorded)"  # a failed card without a reason looks like a bug
        error = f'<p class="error">{e(reason)}</p>' if reason else ""
        if job.mask is None:
            before_caption = "before"
        elif thumbs.mask_missing:
            before_caption = "before (mask missing)"
        else:
            # The mask opens in the viewer too, beside the pictures (its own link, since
            # the outline on the thumbnail is all the card has room for).
            mask_href = file_link(job.mask, self.page_dir, self.base)
            before_caption = (
                f'before + <a class="full mask" href="{e(mask_href)}" data-caption="mask" '
                f'title="{e(str(job.mask))}">mask</a>'
            )
        figures = [self._figure(thumbs.before, "before", before_caption, job.image)]
        if job.outputs:
            n = len(job.outputs)
            for i, (thumb, out) in enumerate(zip(thumbs.outputs, job.outputs, strict=True), 1):
                caption = "after" if n == 1 else f"after {i}"
                figures.append(self._figure(thumb, caption, e(caption), out))
        else:
            figures.append(
                '<figure><div class="ph none">no output</div><figcaption>after</figcaption>'
                "</figure>"
            )
        cost = "—" if job.cost_usd is None else format_usd(job.cost_usd, 4)
        prompt = f'<p class="prompt">{e(job.prompt)}</p>' if show_prompt else ""
        folder = folder_label(job.image, self.base)
        return (
            f'<article class="job {_state_class(job.state)}" id="job-{e(job.key)}" '
            f'data-state="{e(job.state)}" data-folder="{e(folder)}">'
            f'<div class="head"><span class="badge">{e(job.state)}</span>'
            f'<code title="{e(job.key)}">{e(short_key(job.key))}</code>'
            f'<span class="attempts">attempts {job.attempts}</span>'
            f'<span class="cost">{e(cost)}</span></div>'
            f"{error}"
            f'<div class="pics">{"".join(figures)}</div>'
            f"{prompt}"
            f'<p class="path" title="{e(str(job.image))}"><span class="folder">{e(folder)}</span>'
            f"/{e(job.image.name)}</p>"
            f'<p class="about">{e(job.provider)} · {e(job.model)}</p>'
            "</article>\n"
        )

    def _figure(
        self, thumb: Thumbnail | None, label: str, caption_html: str, path: OutputPlace
    ) -> str:
        """A thumbnail (or MISSING_TEXT) that opens the viewer; `label` is plain text,
        `caption_html` already escaped markup. An object in a store has no address a
        browser can open (s3://), so its thumbnail is shown with the URL and no link."""
        e = _esc
        if thumb is None:
            body = f'<div class="ph" title="{e(str(path))}">{MISSING_TEXT}</div>'
        else:
            body = (
                f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
                f'alt="{e(label)}: {e(path.name)}" title="{e(str(path))}" decoding="async">'
            )
        if isinstance(path, ObjectURL):
            return f'<figure class="remote">{body}<figcaption>{caption_html}</figcaption></figure>'
        # A real link: without the script (or with a modifier key) it opens the file itself.
        href = file_link(path, self.page_dir, self.base)
        return (
            f'<figure><a class="full" href="{e(href)}" data-caption="{e(label)}">{body}</a>'
            f"<figcaption>{caption_html}</figcaption></figure>"
        )


def _state_class(state: str) -> str:
    # A class name built from a provider/database string could break out of the
    # attribute or collide with layout classes, so only known states get their own.
    return f"state-{state}" if state in _KNOWN_STATES else "state-other"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _sha256(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"sha256-{digest}"


# Filled by the script when a thumbnail is clicked; static here so the page's markup
# (and its CSP) stays the same whether or not anyone opens it.
_VIEWER = (
    '<div id="viewer" class="viewer" role="dialog" aria-modal="true" '
    'aria-labelledby="viewer-title" hidden>\n'
    '<div class="viewer-bar"><span id="viewer-title"></span>'
    '<button type="button" id="viewer-fit">Fit to window (F)</button>'
    '<button type="button" id="viewer-close">Close (Esc)</button></div>\n'
    '<div id="viewer-pics" class="viewer-pics"></div>\n</div>\n'
)

# 1. Counts the images that really decoded, so a headless browser test can read the result
#    from the DOM; harmless for people (nothing visible changes).
# 2. Filters: hides cards (and groups and sections left empty) by state, folder and words
#    (all must occur in the prompt, the file paths or the error).
# 3. The viewer: a click on a thumbnail shows the card's pictures at full size from disk.
# Text only ever goes in through textContent and attributes, never as markup.
_SCRIPT = (
    """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-total", String(imgs.length));
});
(function () {
  "use strict";
  var MISSING = MISSING_JSON;
  var byId = function (id) { return document.getElementById(id); };
  var each = function (list, f) { Array.prototype.forEach.call(list, f); };
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.job"));
  var promptOf = function (card) {
    var head = card.closest(".group").querySelector(".group-head .prompt");
    var own = card.querySelector(".prompt");
    return (head || own || {textContent: ""}).textContent;
  };
  var haystacks = cards.map(function (card) {
    var text = [promptOf(card), card.textContent];
    each(card.querySelectorAll("[title]"), function (el) { text.push(el.title); });
    return text.join("\\n").toLowerCase();
  });
  var state = byId("f-state"), folder = byId("f-folder"), words = byId("f-text");
  function filter() {
    var want = words.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    cards.forEach(function (card, i) {
      var ok = (!state.value || card.getAttribute("data-state") === state.value) &&
        (!folder.value || card.getAttribute("data-folder") === folder.value) &&
        want.every(function (w) { return haystacks[i].indexOf(w) >= 0; });
      card.hidden = !ok;
      if (ok) { shown++; }
    });
    each(document.querySelectorAll(".group, section.jobs"), function (box) {
      var all = box.querySelectorAll("article.job").length;
      var left = box.querySelectorAll("article.job:not([hidden])").length;
      var count = box.querySelector(".group-head .n");
      box.hidden = left === 0;
      if (count && box.classList.contains("group")) {
        count.textContent = left === all ? all + " jobs" : left + " of " + all + " jobs";
      }
    });
    byId("f-shown").textContent = shown === cards.length ?
      cards.length + " jobs" : shown + " of " + cards.length + " jobs";
    byId("f-none").hidden = shown > 0;
  }
  if (state) {
    byId("filters").hidden = false;
    state.addEventListener("change", filter);
    folder.addEventListener("change", filter);
    words.addEventListener("input", filter);
    filter();  // a reload may keep the fields' old values
  }

  var viewer = byId("viewer"), pics = byId("viewer-pics"), opener = null;
  function placeholder(text, cls, path) {
    var div = document.createElement("div");
    div.className = cls;
    div.textContent = text;
    if (path) { div.title = path; }
    return div;
  }
  function panel(link) {
    var figure = document.createElement("figure");
    var inner = link.querySelector("[title]");
    var path = link.title || (inner ? inner.title : "");
    var img = document.createElement("img");
    img.alt = link.getAttribute("data-caption");
    img.title = path;
    if (link.classList.contains("mask")) { img.className = "mask"; }
    img.addEventListener("error", function () {
      figure.replaceChild(placeholder(MISSING, "ph", path), img);
    });
    img.src = link.href;
    var caption = document.createElement("figcaption"), file = document.createElement("a");
    file.href = link.href;
    file.textContent = path.split(/[\\\\/]/).pop();
    caption.appendChild(document.createTextNode(link.getAttribute("data-caption") + ": "));
    caption.appendChild(file);
    figure.appendChild(img);
    figure.appendChild(caption);
    return figure;
  }
  function open(card, from) {
    var links = Array.prototype.slice.call(card.querySelectorAll("a.full"));
    // Before and after side by side; the mask, if any, last.
    links = links.filter(function (a) { return !a.classList.contains("mask"); })
      .concat(links.filter(function (a) { return a.classList.contains("mask"); }));
    pics.textContent = "";
    links.forEach(function (link) { pics.appendChild(panel(link)); });
    if (card.querySelector(".ph.none")) {
      var none = document.createElement("figure");
      none.appendChild(placeholder("no output", "ph none"));
      pics.appendChild(none);
    }
    var key = card.querySelector(".head code");
    byId("viewer-title").textContent = card.getAttribute("data-state") + " \\u00b7 " +
      (key ? key.textContent : "") + " \\u00b7 " + promptOf(card);
    opener = from;
    viewer.hidden = false;
    document.body.classList.add("viewing");
    byId("viewer-close").focus();
  }
  function close() {
    viewer.hidden = true;
    pics.textContent = "";  // stops loading pictures nobody looks at any more
    document.body.classList.remove("viewing");
    if (opener) { opener.focus(); }
  }
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a.full") : null;
    var card = link ? link.closest("article.job") : null;
    // A modified click keeps the browser's own meaning (new tab, save, ...).
    if (!card || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey ||
        event.altKey) { return; }
    event.preventDefault();
    open(card, link);
  });
  byId("viewer-close").addEventListener("click", close);
  byId("viewer-fit").addEventListener("click", function () { viewer.classList.toggle("fit"); });
  viewer.addEventListener("click", function (event) {
    if (event.target === viewer || event.target === pics) { close(); }
  });
  document.addEventListener("keydown", function (event) {
    if (viewer.hidden) { return; }
    if (event.key === "Escape") { event.preventDefault(); close(); }
    else if (event.key === "f" || event.key === "F") { viewer.classList.toggle("fit"); }
  });
})();
"""
).replace("MISSING_JSON", json.dumps(MISSING_TEXT))

# THUMB and CARD are replaced with pixel sizes derived from thumb_px.
_STYLE = """
:root { color-scheme: light; --fail: #b00020; --ok: #1b7f3b; --muted: #666; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0 auto; padding: 16px 24px; max-width: 1800px; color: #222; background: #f4f4f5; }
body.viewing { overflow: hidden; }
h1 { margin: 0 0 8px; font-size: 22px; }
h2 { margin: 24px 0 8px; font-size: 18px; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
header dt { color: var(--muted); }
header dd { margin: 0; overflow-wrap: anywhere; }
.total-cost { font-weight: 600; }
.counts { list-style: none; padding: 0; margin: 12px 0 0; display: flex; flex-wrap: wrap;
  gap: 8px; }
.counts li { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 4px 10px; }
.counts li.state-failed b { color: var(--fail); }
.counts li.state-succeeded b { color: var(--ok); }
.filters { position: sticky; top: 0; z-index: 5; display: flex; flex-wrap: wrap; gap: 8px 16px;
  align-items: center; margin: 12px -8px 0; padding: 8px; background: #f4f4f5;
  border-bottom: 1px solid #ddd; }
.filters select { max-width: 24em; }
.filters .text { flex: 1 1 16em; display: flex; gap: 6px; align-items: center; }
.filters input { flex: 1; min-width: 8em; }
#f-shown { color: var(--muted); font-variant-numeric: tabular-nums; }
.group { margin: 0 0 16px; }
.group-head { display: flex; gap: 12px; align-items: baseline; margin: 12px 0 6px; }
.group-head .prompt { margin: 0; font-size: 15px; font-weight: 600; white-space: pre-wrap;
  overflow-wrap: anywhere; max-height: 8em; overflow: auto; }
.group-head .n { color: var(--muted); white-space: nowrap; }
.none { color: var(--muted); font-style: italic; }
.grid { display: grid; gap: 12px;
  grid-template-columns: repeat(auto-fill, minmax(min(CARDpx, 100%), 1fr)); }
.job { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px;
  min-width: 0; }
.job.state-failed { border: 2px solid var(--fail); }
.head { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: baseline; }
.head code { color: var(--muted); }
.badge { font-weight: 600; text-transform: uppercase; font-size: 12px; padding: 1px 6px;
  border-radius: 4px; background: #e5e5e5; }
.state-failed .badge { background: var(--fail); color: #fff; }
.state-succeeded .badge { background: var(--ok); color: #fff; }
.state-cancelled .badge { background: #8a6d00; color: #fff; }
.cost { margin-left: auto; font-variant-numeric: tabular-nums; }
.error { margin: 8px 0; padding: 6px 8px; background: #fdecef; color: var(--fail);
  border-left: 4px solid var(--fail); font-weight: 600; white-space: pre-wrap;
  overflow-wrap: anywhere; max-height: 10em; overflow: auto; }
.pics { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
figure { margin: 0; }
a.full { display: block; cursor: zoom-in; }
figcaption a.full { display: inline; }
figure img { display: block; max-width: 100%; height: auto; background: #eee; }
figcaption { font-size: 12px; color: var(--muted); }
figcaption a { color: inherit; }
.ph { width: THUMBpx; max-width: 100%; height: THUMBpx; display: flex; align-items: center;
  justify-content: center; border: 2px dashed #c33; color: #c33; background: #fafafa;
  font-weight: 600; }
.ph.none { border-color: #bbb; color: #999; }
.prompt { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 8em;
  overflow: auto; }
.path { margin: 4px 0 0; font-size: 12px; overflow-wrap: anywhere; }
.path .folder { color: var(--muted); }
.about { margin: 2px 0 0; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.empty { color: var(--muted); }
.viewer { position: fixed; inset: 0; z-index: 10; display: flex; flex-direction: column;
  background: rgba(16, 16, 16, 0.94); color: #eee; }
.viewer-bar { display: flex; gap: 12px; align-items: center; padding: 8px 16px; }
#viewer-title { flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.viewer-pics { flex: 1; min-height: 0; overflow: auto; display: flex; gap: 16px;
  align-items: flex-start; padding: 0 16px 16px; }
.viewer-pics figure { flex: none; }
.viewer-pics img { display: block; max-width: none; background: #777; }
.viewer-pics img.mask { background: repeating-conic-gradient(#aaa 0 25%, #eee 0 50%) 0 0 / 16px
  16px; }
.viewer-pics figcaption, .viewer-pics figcaption a { color: #ccc; }
.viewer.fit .viewer-pics figure { flex: 1 1 0; min-width: 0; }
.viewer.fit .viewer-pics img { max-width: 100%; max-height: calc(100vh - 90px); width: auto;
  height: auto; }
"""
