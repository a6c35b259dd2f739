"""A batch run as one static HTML page: totals, then before/after thumbnails per job.

The page has to open from disk, offline, years later and on another machine, so
everything it shows is inside the file: CSS and a tiny script inline, images as
`data:` URIs of small WebP (or JPEG) thumbnails. Prompts and error messages come
from users and providers, so every piece of text is escaped, and a Content-Security-
Policy lets only our own (hashed) style and script run, as a second line of defence.

`render_html` is pure; `write_report` makes the thumbnails in a thread pool (Pillow
releases the GIL while decoding, resizing and encoding) and writes the page atomically.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps, features

from runner.files.outputs import write_atomic
from runner.money import format_usd
from runner.records import JobState

# The outline of the edited area: magenta is rare in photographs, so it stands out.
OUTLINE_RGB = (255, 0, 255)
QUALITY = 70
# Text shown in place of an image file that is missing or unreadable (tests look for it).
MISSING_TEXT = "missing"

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
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


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
    outputs: tuple[Path, ...]  # output image paths (may be missing on disk)


@dataclass(frozen=True, slots=True)
class ReportTotals:
    counts: Mapping[str, int]  # per state
    cost_usd: float
    manifest: str
    generated_at: datetime


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


def make_thumbnail(image: Path, thumb_px: int, mask: Path | None = None) -> Thumbnail | None:
    """A thumbnail of `image` at most `thumb_px` on its longer side, with the outline of
    `mask`'s edited area drawn over it; None if `image` cannot be read.

    An unreadable mask leaves the picture without an outline.
    """
    return _thumbnail_with_mask(image, mask, thumb_px)[0]


def render_html(
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    thumbnails: Sequence[JobThumbnails],
    *,
    thumb_px: int = 160,
) -> str:
    """The whole page; `thumbnails[i]` belongs to `jobs[i]`."""
    if len(thumbnails) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(thumbnails)} thumbnail sets")
    style = _STYLE.replace("THUMB", str(thumb_px)).replace("CARD", str(2 * thumb_px + 40))
    csp = (
        "default-src 'none'; img-src data:; "
        f"style-src '{_sha256(style)}'; script-src '{_sha256(_SCRIPT)}'"
    )
    pairs = list(zip(jobs, thumbnails, strict=True))
    failed = [p for p in pairs if p[0].state == JobState.FAILED]
    # The rest keep manifest order, which is how people find a job they remember.
    others = [p for p in pairs if p[0].state != JobState.FAILED]

    e = _esc
    title = f"Batch report: {totals.manifest}"
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{e(csp)}">\n',
        f"<title>{e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n",
        _render_totals(totals, len(jobs)),
    ]
    if failed:
        parts.append(f'<section id="failed">\n<h2>Failed jobs ({len(failed)})</h2>\n')
        parts.append('<div class="grid">\n')
        parts.extend(_render_job(job, thumbs) for job, thumbs in failed)
        parts.append("</div>\n</section>\n")
    if others:
        heading = "Other jobs" if failed else "Jobs"
        parts.append(f'<section id="jobs">\n<h2>{heading} ({len(others)})</h2>\n')
        parts.append('<div class="grid">\n')
        parts.extend(_render_job(job, thumbs) for job, thumbs in others)
        parts.append("</div>\n</section>\n")
    if not jobs:
        parts.append('<p class="empty">No jobs.</p>\n')
    parts.append(f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")
    return "".join(parts)


def write_report(
    jobs: Sequence[ReportJob],
    totals: ReportTotals,
    path: Path,
    *,
    thumb_px: int = 160,
    workers: int = 2,
) -> ReportStats:
    """Make the thumbnails, render the page and put it at `path` whole or not at all."""
    if thumb_px < 1:
        raise ValueError(f"thumb_px must be at least 1, got {thumb_px}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    # Many jobs often share one input (several prompts per picture), so each distinct
    # (picture, mask) is decoded once; the page still repeats its data: URI per job.
    requests = {(job.image, job.mask) for job in jobs}
    requests.update((out, None) for job in jobs for out in job.outputs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report") as pool:
        futures = {
            req: pool.submit(_thumbnail_with_mask, req[0], req[1], thumb_px) for req in requests
        }
        done = {req: future.result() for req, future in futures.items()}

    thumbnails = [
        JobThumbnails(
            before=done[(job.image, job.mask)][0],
            outputs=tuple(done[(out, None)][0] for out in job.outputs),
            mask_missing=not done[(job.image, job.mask)][1],
        )
        for job in jobs
    ]
    page = render_html(jobs, totals, thumbnails, thumb_px=thumb_px)
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
    image: Path, mask: Path | None, thumb_px: int
) -> tuple[Thumbnail | None, bool]:
    """The thumbnail (None if `image` is unreadable) and whether `mask` was usable."""
    try:
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


def _load_small(path: Path, thumb_px: int) -> Image.Image:
    """The picture as viewers show it, at most `thumb_px` on its longer side, in RGB."""
    with Image.open(path) as im:
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
    with Image.open(mask_path) as mask:
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


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
    except _UNREADABLE:
        return False
    return True


# --- page --------------------------------------------------------------------------------


def _render_totals(totals: ReportTotals, job_count: int) -> str:
    e = _esc
    states = [s.value for s in _STATE_ORDER]
    states += sorted(s for s in totals.counts if s not in _KNOWN_STATES)
    counts = "".join(
        f'<li class="{_state_class(s)}"><span>{e(s)}</span> <b>{totals.counts.get(s, 0)}</b></li>'
        for s in states
    )
    when = totals.generated_at.isoformat(sep=" ", timespec="seconds")
    return (
        "<header>\n<h1>Batch report</h1>\n<dl>"
        f"<dt>Manifest</dt><dd>{e(totals.manifest)}</dd>"
        f"<dt>Generated</dt><dd>{e(when)}</dd>"
        f"<dt>Jobs</dt><dd>{job_count}</dd>"
        f'<dt>Total cost</dt><dd class="total-cost">{e(format_usd(totals.cost_usd, 4))}</dd>'
        f'</dl>\n<ul class="counts">{counts}</ul>\n</header>\n'
    )


def _render_job(job: ReportJob, thumbs: JobThumbnails) -> str:
    e = _esc
    reason = job.error
    if not reason and job.state == JobState.FAILED:
        reason = "(no reason recorded)"  # a failed card without a reason looks like a bug
    error = f'<p class="error">{e(reason)}</p>' if reason else ""
    before_caption = "before + mask" if job.mask is not None else "before"
    if thumbs.mask_missing:
        before_caption = "before (mask missing)"
    figures = [_figure(thumbs.before, before_caption, job.image)]
    if job.outputs:
        n = len(job.outputs)
        figures += [
            _figure(thumb, "after" if n == 1 else f"after {i}", out)
            for i, (thumb, out) in enumerate(zip(thumbs.outputs, job.outputs, strict=True), 1)
        ]
    else:
        figures.append(
            '<figure><div class="ph none">no output</div><figcaption>after</figcaption></figure>'
        )
    cost = "—" if job.cost_usd is None else format_usd(job.cost_usd, 4)
    return (
        f'<article class="job {_state_class(job.state)}" id="job-{e(job.key)}">'
        f'<div class="head"><span class="badge">{e(job.state)}</span>'
        f'<code title="{e(job.key)}">{e(job.key[:12])}</code>'
        f'<span class="attempts">attempts {job.attempts}</span>'
        f'<span class="cost">{e(cost)}</span></div>'
        f"{error}"
        f'<div class="pics">{"".join(figures)}</div>'
        f'<p class="prompt">{e(job.prompt)}</p>'
        f'<p class="about">{e(job.provider)} · {e(job.model)} · '
        f'<span title="{e(str(job.image))}">{e(job.image.name)}</span></p>'
        "</article>\n"
    )


def _figure(thumb: Thumbnail | None, caption: str, path: Path) -> str:
    e = _esc
    if thumb is None:
        body = f'<div class="ph" title="{e(str(path))}">{MISSING_TEXT}</div>'
    else:
        body = (
            f'<img src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="{e(caption)}: {e(path.name)}" title="{e(str(path))}" decoding="async">'
        )
    return f"<figure>{body}<figcaption>{e(caption)}</figcaption></figure>"


def _state_class(state: str) -> str:
    # A class name built from a provider/database string could break out of the
    # attribute or collide with layout classes, so only known states get their own.
    return f"state-{state}" if state in _KNOWN_STATES else "state-other"


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _sha256(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return f"sha256-{digest}"


# Counts the images that really decoded, so a headless browser test can read the result
# from the DOM; harmless for people (nothing visible changes).
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", String(ok));
  document.body.setAttribute("data-images-total", String(imgs.length));
});
"""

# THUMB and CARD are replaced with pixel sizes derived from thumb_px.
_STYLE = """
:root { color-scheme: light; --fail: #b00020; --ok: #1b7f3b; --muted: #666; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0 auto; padding: 16px 24px; max-width: 1800px; color: #222; background: #f4f4f5; }
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
figure img { display: block; max-width: 100%; height: auto; background: #eee; }
figcaption { font-size: 12px; color: var(--muted); }
.ph { width: THUMBpx; max-width: 100%; height: THUMBpx; display: flex; align-items: center;
  justify-content: center; border: 2px dashed #c33; color: #c33; background: #fafafa;
  font-weight: 600; }
.ph.none { border-color: #bbb; color: #999; }
.prompt { margin: 4px 0; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 8em;
  overflow: auto; }
.about { margin: 4px 0 0; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.empty { color: var(--muted); }
"""
