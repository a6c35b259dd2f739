"""The static HTML report: escaping, embedded thumbnails, mask outlines, placeholders, size."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from runner.errors import OutputError
from runner.files.html_report import (
    MISSING_TEXT,
    OUTLINE_RGB,
    JobThumbnails,
    ReportJob,
    ReportTotals,
    render_html,
    write_report,
)
from runner.files.outputs import TEMP_SUFFIX

THUMB = 96
EVIL_PROMPT = 'Add a hat <script>alert("x")</script> & a "scarf"'
EVIL_ERROR = "HTTP 400: <b>moderation_blocked</b> & nothing was billed"


def picture(path: Path, size: tuple[int, int] = (320, 240), colour: int = 0) -> Path:
    """Greens and greys only, so no pixel is ever close to the magenta outline."""
    im = Image.new("RGB", size, (90, 120 + colour % 100, 90))
    draw = ImageDraw.Draw(im)
    for i in range(0, size[0], 40):
        draw.rectangle((i, 0, i + 15, size[1]), fill=(60, 160, 60 + colour % 60))
    im.save(path)
    return path


def mask(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    """Opaque, with a transparent rectangle (alpha 0: the area to edit)."""
    im = Image.new("RGBA", size, (0, 0, 0, 255))
    ImageDraw.Draw(im).rectangle((80, 60, 240, 180), fill=(0, 0, 0, 0))
    im.save(path)
    return path


def job(tmp_path: Path, name: str, **fields: object) -> ReportJob:
    base = ReportJob(
        key=f"{name}-key-0123456789abcdef",
        image=picture(tmp_path / f"{name}.png", colour=len(name)),
        mask=None,
        prompt=f"prompt for {name}",
        provider="openai",
        model="gpt-image-1",
        state="succeeded",
        attempts=1,
        cost_usd=0.042,
        error=None,
        outputs=(picture(tmp_path / f"{name}-out.png", colour=len(name) + 7),),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def totals(jobs: list[ReportJob]) -> ReportTotals:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    return ReportTotals(
        counts=counts,
        cost_usd=sum(j.cost_usd or 0 for j in jobs),
        manifest="batches/<spring> & summer.yaml",
        generated_at=datetime(2025, 4, 1, 12, 30, 5, tzinfo=UTC),
    )


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(page: str, name: str) -> list[dict[str, str | None]]:
    parser = Tags()
    parser.feed(page)
    return [attrs for tag, attrs in parser.tags if tag == name]


def decode(src: str | None) -> Image.Image:
    assert src is not None
    match = re.fullmatch(r"data:(image/(?:webp|jpeg));base64,([A-Za-z0-9+/=]+)", src)
    assert match, src[:60]
    data = base64.b64decode(match.group(2), validate=True)
    im = Image.open(io.BytesIO(data))
    im.load()
    assert Image.MIME[im.format or ""] == match.group(1)
    return im.convert("RGB")


def outline_pixels(im: Image.Image) -> int:
    # The thumbnail is lossy, so "magenta" is a neighbourhood, not an exact value.
    r, g, b = OUTLINE_RGB
    raw = im.convert("RGB").tobytes()  # getdata() is deprecated in newer Pillow
    return sum(
        1
        for pr, pg, pb in zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
        if abs(pr - r) < 70 and abs(pg - g) < 90 and abs(pb - b) < 70
    )


@pytest.fixture
def batch(tmp_path: Path) -> list[ReportJob]:
    return [
        job(tmp_path, "plain", prompt=EVIL_PROMPT, attempts=2, cost_usd=0.0425),
        job(tmp_path, "masked", mask=mask(tmp_path / "masked-mask.png"), cost_usd=0.17),
        job(
            tmp_path,
            "broken",
            state="failed",
            attempts=3,
            cost_usd=None,
            error=EVIL_ERROR,
            outputs=(),
        ),
        job(tmp_path, "waiting", state="pending", attempts=0, cost_usd=None, outputs=()),
    ]


def test_page_shows_every_job_and_the_totals_escaped(
    tmp_path: Path, batch: list[ReportJob]
) -> None:
    target = tmp_path / "report.html"
    stats = write_report(batch, totals(batch), target, thumb_px=THUMB)
    page = target.read_text("utf-8")

    assert page.startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in page
    assert "<title>Batch report: batches/&lt;spring&gt; &amp; summer.yaml</title>" in page
    assert "2025-04-01 12:30:05+00:00" in page
    assert "$0.2125" in page  # total cost
    assert '<li class="state-succeeded"><span>succeeded</span> <b>2</b></li>' in page
    assert '<li class="state-failed"><span>failed</span> <b>1</b></li>' in page
    assert '<li class="state-pending"><span>pending</span> <b>1</b></li>' in page
    assert '<li class="state-cancelled"><span>cancelled</span> <b>0</b></li>' in page

    # The prompt's <script> and the error's <b> arrive as text, never as markup.
    assert (
        "Add a hat &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a &quot;scarf&quot;"
        in page
    )
    assert "HTTP 400: &lt;b&gt;moderation_blocked&lt;/b&gt; &amp; nothing was billed" in page
    assert EVIL_PROMPT not in page
    assert len(tags(page, "script")) == 1  # only the page's own image counter
    assert "<b>moderation_blocked" not in page

    for j in batch:
        if j.prompt != EVIL_PROMPT:
            assert f'<p class="prompt">{j.prompt}</p>' in page
    cards = re.findall(r'<article class="job state-(\w+)".*?</article>', page, re.S)
    assert cards == [
        "failed",
        "succeeded",
        "succeeded",
        "pending",
    ]  # failed first, then manifest order
    card = {
        m.group(1): m.group(0)
        for m in re.finditer(r'<article[^>]*id="job-(\w+)-key.*?</article>', page, re.S)
    }
    assert '<span class="badge">failed</span>' in card["broken"]
    assert '<span class="attempts">attempts 3</span>' in card["broken"]
    assert '<p class="error">HTTP 400: &lt;b&gt;' in card["broken"]
    assert '<span class="attempts">attempts 2</span>' in card["plain"]
    assert '<span class="cost">$0.0425</span>' in card["plain"]
    assert '<span class="cost">$0.17</span>' in card["masked"]
    assert '<span class="cost">—</span>' in card["waiting"]
    assert page.index('id="failed"') < page.index('id="jobs"')

    # Four befores and two afters; jobs without output say so without claiming a missing file.
    assert stats.jobs == 4
    assert stats.thumbnails == 6
    assert stats.missing_images == 0
    assert stats.bytes_written == target.stat().st_size
    assert MISSING_TEXT not in page


def test_every_image_is_an_embedded_small_thumbnail(tmp_path: Path, batch: list[ReportJob]) -> None:
    target = tmp_path / "report.html"
    write_report(batch, totals(batch), target, thumb_px=THUMB)
    page = target.read_text("utf-8")

    images = tags(page, "img")
    assert len(images) == 6
    for attrs in images:
        im = decode(attrs["src"])
        assert max(im.size) <= THUMB
        assert (str(im.width), str(im.height)) == (attrs["width"], attrs["height"])
    # Nothing is fetched from anywhere: no http(s), file: or protocol-relative references.
    assert not re.search(r'(?:src|href)="(?!data:)', page)
    assert "url(" not in page


def test_mask_outline_is_drawn_over_the_before_thumbnail_only_for_masked_jobs(
    tmp_path: Path, batch: list[ReportJob]
) -> None:
    target = tmp_path / "report.html"
    write_report(batch, totals(batch), target, thumb_px=THUMB)
    page = target.read_text("utf-8")

    before = {
        a["title"]: decode(a["src"])
        for a in tags(page, "img")
        if (a["alt"] or "").startswith("before")
    }
    masked = before[str(tmp_path / "masked.png")]
    plain = before[str(tmp_path / "plain.png")]
    assert outline_pixels(masked) > 50
    assert outline_pixels(plain) == 0
    # The outline follows the transparent rectangle (80..240 x 60..180 of 320x240,
    # i.e. 24..72 x 18..54 at 96 px wide): its centre and the picture's corner stay clean.
    cx, cy = masked.width // 2, masked.height // 2
    assert outline_pixels(masked.crop((cx - 8, cy - 8, cx + 8, cy + 8))) == 0
    assert outline_pixels(masked.crop((0, 0, 12, 12))) == 0
    assert outline_pixels(masked.crop((20, 14, 30, 24))) > 0  # top-left corner of the hole


def palette_mask(path: Path) -> None:
    im = Image.new("P", (320, 240), 1)
    im.putpalette([0, 0, 0, 255, 255, 255])
    ImageDraw.Draw(im).rectangle((80, 60, 240, 180), fill=0)
    im.save(path, transparency=0)  # palette index 0 is the transparent hole


def la_mask(path: Path) -> None:
    with Image.open(mask(path)) as im:
        la = im.convert("LA")
    la.save(path)


@pytest.mark.parametrize("make", [palette_mask, la_mask], ids=["P+transparency", "LA"])
def test_masks_in_other_modes_with_transparency_are_outlined(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    make(tmp_path / "m.png")
    jobs = [job(tmp_path, "other", mask=tmp_path / "m.png")]
    target = tmp_path / "report.html"
    write_report(jobs, totals(jobs), target, thumb_px=THUMB)

    before = decode(tags(target.read_text("utf-8"), "img")[0]["src"])
    assert outline_pixels(before.crop((20, 14, 30, 24))) > 0  # the hole's top-left corner
    assert outline_pixels(before.crop((0, 0, 12, 12))) == 0


def test_exif_rotated_photo_is_shown_upright_with_the_mask_on_the_upright_picture(
    tmp_path: Path,
) -> None:
    # Stored 240x320 with orientation 6 (viewers turn it a quarter clockwise): on screen
    # it is 320x240, and the runner matches the mask against that upright size.
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(picture(tmp_path / "upright.png")) as upright:
        stored = upright.transpose(Image.Transpose.ROTATE_90)
    stored.save(tmp_path / "photo.jpg", exif=exif)
    hole = Image.new("RGBA", (320, 240), (0, 0, 0, 255))
    ImageDraw.Draw(hole).rectangle((20, 20, 120, 220), fill=(0, 0, 0, 0))  # the left part
    hole.save(tmp_path / "left.png")
    jobs = [job(tmp_path, "turned", image=tmp_path / "photo.jpg", mask=tmp_path / "left.png")]
    target = tmp_path / "report.html"
    write_report(jobs, totals(jobs), target, thumb_px=THUMB)

    before = decode(tags(target.read_text("utf-8"), "img")[0]["src"])
    assert before.size == (96, 72)
    assert outline_pixels(before.crop((0, 0, 48, 72))) > 20
    assert outline_pixels(before.crop((48, 0, 96, 72))) == 0


def test_mask_without_alpha_counts_white_as_the_edited_area(tmp_path: Path) -> None:
    grey = Image.new("L", (320, 240), 0)
    ImageDraw.Draw(grey).rectangle((80, 60, 240, 180), fill=255)
    grey.save(tmp_path / "grey-mask.png")
    jobs = [job(tmp_path, "grey", mask=tmp_path / "grey-mask.png")]
    target = tmp_path / "report.html"
    write_report(jobs, totals(jobs), target, thumb_px=THUMB)

    before = decode(tags(target.read_text("utf-8"), "img")[0]["src"])
    assert outline_pixels(before) > 50
    assert outline_pixels(before.crop((0, 0, 12, 12))) == 0


def test_missing_and_unreadable_files_become_placeholders(tmp_path: Path) -> None:
    (tmp_path / "garbage.png").write_bytes(b"not a picture at all")
    jobs = [
        job(tmp_path, "gone", image=tmp_path / "nope.png", mask=tmp_path / "nope-mask.png"),
        job(tmp_path, "junk", outputs=(tmp_path / "garbage.png", tmp_path / "deleted.png")),
        job(tmp_path, "nomask", mask=tmp_path / "lost-mask.png"),
    ]
    target = tmp_path / "report.html"
    stats = write_report(jobs, totals(jobs), target, thumb_px=THUMB)
    page = target.read_text("utf-8")

    placeholders = re.findall(r'<div class="ph" title="([^"]*)">' + MISSING_TEXT + "</div>", page)
    assert sorted(placeholders) == sorted(
        str(tmp_path / n) for n in ("nope.png", "garbage.png", "deleted.png")
    )
    assert "before (mask missing)" in page
    # gone: image + mask; junk: two outputs; nomask: the mask.
    assert stats.missing_images == 5
    assert stats.thumbnails == 4  # gone's output, junk's and nomask's before, nomask's output
    for attrs in tags(page, "img"):
        decode(attrs["src"])


@pytest.mark.slow  # 200 jobs of images
def test_two_hundred_jobs_stay_small_per_job(tmp_path: Path) -> None:
    # Noisy 512 px pictures; one before + after measured about 3.8 kB here. The bound
    # keeps a 1,000-job report under ~8 MB, well inside the ~15 MB a browser opens easily.
    sources = []
    for i in range(8):
        noise = Image.effect_noise((512, 512), 40 + i).convert("RGB")
        sources.append(picture(tmp_path / f"src{i}.png", (512, 512), i))
        Image.blend(Image.open(sources[-1]).convert("RGB"), noise, 0.3).save(sources[-1])
    jobs = [
        ReportJob(
            key=f"{i:064x}",
            image=sources[i % 8],
            mask=None,
            prompt=f"prompt number {i} " * 3,
            provider="openai",
            model="gpt-image-1",
            state="succeeded",
            attempts=1,
            cost_usd=0.04,
            error=None,
            outputs=(sources[(i + 3) % 8],),
        )
        for i in range(200)
    ]
    target = tmp_path / "report.html"
    stats = write_report(jobs, totals(jobs), target)  # the default 160 px thumbnails

    assert stats.thumbnails == 400
    per_job = stats.bytes_written / len(jobs)
    assert per_job < 8_000, per_job


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path, batch: list[ReportJob]) -> None:
    out = tmp_path / "reports"
    target = out / "report.html"
    target.parent.mkdir()
    target.write_text("old report")
    write_report(batch, totals(batch), target, thumb_px=THUMB, workers=3)

    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert target.read_text("utf-8").startswith("<!doctype html>")
    assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))


def test_a_failed_write_keeps_the_old_report_and_removes_the_temp_file(
    tmp_path: Path, batch: list[ReportJob], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")

    def broken_replace(self: Path, other: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", broken_replace)
    with pytest.raises(OutputError, match="No space left"):
        write_report(batch, totals(batch), target, thumb_px=THUMB)
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)] == []


def test_render_html_is_pure_and_handles_no_jobs_and_odd_states() -> None:
    odd = ReportJob(
        key='k"><img src=x>',
        image=Path("/nowhere/a.png"),
        mask=None,
        prompt="",
        provider="p",
        model="m",
        state='weird" onmouseover="x',
        attempts=0,
        cost_usd=None,
        error=None,
        outputs=(Path("/nowhere/b.png"),),
    )
    page = render_html([odd], totals([odd]), [JobThumbnails(None, (None,))])
    assert 'class="job state-other"' in page
    assert "weird&quot; onmouseover=&quot;x" in page
    assert tags(page, "img") == []
    assert page.count(f">{MISSING_TEXT}</div>") == 2

    empty = render_html([], totals([]), [])
    assert "No jobs." in empty
    with pytest.raises(ValueError, match="thumbnail sets"):
        render_html([odd], totals([odd]), [])


def test_thumbnails_are_made_once_per_distinct_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.files import html_report as report

    calls: list[Path] = []
    real = report._load_small

    def counting(path: Path, thumb_px: int) -> Image.Image:
        calls.append(path)
        return real(path, thumb_px)

    monkeypatch.setattr(report, "_load_small", counting)
    shared = job(tmp_path, "shared")
    jobs = [replace(shared, key=f"k{i}", prompt=f"variant {i}") for i in range(5)]
    stats = write_report(jobs, totals(jobs), tmp_path / "r.html", thumb_px=THUMB)
    assert stats.thumbnails == 10
    assert sorted(calls) == sorted([shared.image, *shared.outputs])


@pytest.mark.parametrize("bad", [{"thumb_px": 0}, {"workers": 0}])
def test_bad_settings_are_refused(tmp_path: Path, bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        write_report([], totals([]), tmp_path / "r.html", **bad)
    assert not (tmp_path / "r.html").exists()


def test_a_failed_job_without_a_reason_still_says_so() -> None:
    silent = ReportJob(
        key="k",
        image=Path("/nowhere/a.png"),
        mask=None,
        prompt="p",
        provider="p",
        model="m",
        state="failed",
        attempts=1,
        cost_usd=None,
        error=None,
        outputs=(),
    )
    page = render_html([silent], totals([silent]), [JobThumbnails(None, ())])
    assert '<p class="error">(no reason recorded)</p>' in page
