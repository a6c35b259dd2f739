"""The static HTML report: escaping, embedded thumbnails, mask outlines, placeholders, size,
grouping by prompt, folder labels, links to the full-size files, local time, progress, and
`runner report`'s default output beside the manifest."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin

import pytest
import yaml
from helpers import invoke
from PIL import Image, ImageDraw

from runner.errors import OutputError
from runner.files.html_report import (
    MISSING_TEXT,
    OUTLINE_RGB,
    JobThumbnails,
    ReportJob,
    ReportTotals,
    file_link,
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


@pytest.fixture(autouse=True)
def machine_zone() -> Iterator[Callable[[str], None]]:
    """The page shows times in the machine's zone: UTC here unless a test picks another,
    so the expected text does not depend on where the tests run."""
    if not hasattr(time, "tzset"):  # Windows: the zone cannot be switched in process
        yield lambda zone: pytest.skip("time.tzset is not available")
        return
    saved = os.environ.get("TZ")

    def use(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    use("UTC0")
    try:
        yield use
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


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
    # The viewer's script knows the placeholder text for a file gone since; the markup
    # must not show it.
    assert MISSING_TEXT not in re.sub(r"<script>.*?</script>", "", page, flags=re.S)


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
    # Nothing is fetched when the page opens: every src is embedded, no CSS url(). The only
    # references out are the viewer's links to the batch's own pictures, relative to the
    # page (it sits beside them): no http(s), file: or protocol-relative references.
    assert not re.search(r'src="(?!data:)', page)
    assert "url(" not in page
    assert re.findall(r'\bhref="', page) == ['href="'] * len(tags(page, "a"))
    hrefs = [a["href"] or "" for a in tags(page, "a")]
    assert all(a["class"] in ("full", "full mask") for a in tags(page, "a"))
    assert not [h for h in hrefs if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|//", h)]
    own = {p for j in batch for p in (j.image, j.mask, *j.outputs) if p is not None}
    assert {tmp_path / unquote(h) for h in hrefs} == own


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


# --- grouping, folders, links, time, progress, the command ---------------------------------


class Outline(HTMLParser):
    """What a reader sees of the page's structure: per section, its groups in order, each
    with its heading's text (entities decoded, as a browser shows it), its cards' ids, the
    prompts printed on those cards, and any tag that turned up inside a heading."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[dict[str, object]]] = {}
        self._section = ""
        self._in: str | None = None  # "heading" or "card-prompt" while inside one
        self.tags_in_headings: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"] or ""
            self.sections[self._section] = []
        elif tag == "div" and a.get("class") == "group":
            self.sections[self._section].append({"heading": None, "cards": [], "prompts": []})
        elif tag == "h3" and a.get("class") == "prompt":
            self._in = "heading"
            self.group["heading"] = ""
        elif tag == "p" and a.get("class") == "prompt":
            self._in = "card-prompt"
            self.group["prompts"].append("")  # type: ignore[attr-defined]
        elif tag == "article":
            self.group["cards"].append(name_of(a["id"]))  # type: ignore[attr-defined]
        elif self._in == "heading":
            self.tags_in_headings.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h3", "p"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "heading":
            self.group["heading"] = str(self.group["heading"]) + data
        elif self._in == "card-prompt":
            prompts: list[str] = self.group["prompts"]  # type: ignore[assignment]
            prompts[-1] += data

    @property
    def group(self) -> dict[str, object]:
        return self.sections[self._section][-1]


def name_of(card_id: str | None) -> str:
    """The name `job()` was given, from a card's id ("job-NAME-key-...")."""
    return (card_id or "").removeprefix("job-").split("-key-")[0]


def outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    return parser


def no_thumbnails(jobs: list[ReportJob]) -> list[JobThumbnails]:
    return [JobThumbnails(None, tuple(None for _ in j.outputs)) for j in jobs]


def test_jobs_sharing_a_prompt_are_grouped_once_under_it(tmp_path: Path) -> None:
    shared = 'Make it <b>winter</b> & "snowy"'
    jobs = [
        job(tmp_path, "a1", prompt=shared),
        job(tmp_path, "solo1"),
        job(tmp_path, "a2", prompt=shared),
        job(tmp_path, "solo2"),
        job(tmp_path, "a3", prompt=shared),
        job(tmp_path, "f1", prompt=shared, state="failed", error="no", outputs=()),
        job(tmp_path, "blank1", prompt=""),
        job(tmp_path, "blank2", prompt=""),
    ]
    page = render_html(jobs, totals(jobs), no_thumbnails(jobs))
    found = outline(page)

    assert found.sections["jobs"] == [
        # In the order each prompt first appears; within a group, manifest order.
        {"heading": shared, "cards": ["a1", "a2", "a3"], "prompts": []},
        # Prompts of one job each stay on their cards, neighbours sharing one grid.
        {
            "heading": None,
            "cards": ["solo1", "solo2"],
            "prompts": ["prompt for solo1", "prompt for solo2"],
        },
        {"heading": "(no prompt)", "cards": ["blank1", "blank2"], "prompts": []},
    ]
    # The one failed job with that prompt is alone in its section: the prompt is on its card.
    assert found.sections["failed"] == [{"heading": None, "cards": ["f1"], "prompts": [shared]}]
    assert found.tags_in_headings == ["span"]  # the "(no prompt)" note; the <b> stayed text
    escaped = "Make it &lt;b&gt;winter&lt;/b&gt; &amp; &quot;snowy&quot;"
    assert page.count(escaped) == 2  # once per section, not once per card
    assert f'<h3 class="prompt">{escaped}</h3><span class="n">3 jobs</span>' in page
    assert "<b>winter" not in page


def test_cards_and_the_folder_filter_name_folders_relative_to_the_manifest(
    tmp_path: Path,
) -> None:
    root = tmp_path / "batch"
    odd = root / 'we"ird <dir> & co'
    for folder in (root / "photos" / "a", root / "photos" / "b", odd, tmp_path / "elsewhere"):
        folder.mkdir(parents=True)
    jobs = [
        job(tmp_path, "x", image=picture(root / "photos" / "a" / "x.png")),
        job(tmp_path, "y", image=picture(root / "photos" / "b" / "y.png")),
        job(tmp_path, "x2", image=picture(root / "photos" / "a" / "x2.png"), state="failed"),
        job(tmp_path, "top", image=picture(root / "top.png")),
        job(tmp_path, "odd", image=picture(odd / "w.png")),
        job(tmp_path, "far", image=picture(tmp_path / "elsewhere" / "z.png")),
    ]
    page = render_html(jobs, replace(totals(jobs), folder=root), no_thumbnails(jobs))

    far = str(tmp_path / "elsewhere")  # outside the manifest's folder: the whole path
    expected = {
        "x": "photos/a",
        "y": "photos/b",
        "x2": "photos/a",
        "top": ".",
        "odd": 'we"ird <dir> & co',
        "far": far,
    }
    cards = {name_of(a["id"]): a for a in tags(page, "article")}
    assert {k: a["data-folder"] for k, a in cards.items()} == expected
    for key, folder in expected.items():
        name = next(j for j in jobs if j.key.startswith(f"{key}-")).image.name
        line = f'<span class="folder">{html_escape(folder)}</span>/{name}</p>'
        assert line in page, key
    assert "<dir>" not in page

    folder_select = page[
        page.index('id="f-folder"') : page.index("</select>", page.index('id="f-folder"'))
    ]
    assert re.findall(r'<option value="([^"]*)">([^<]*)</option>', folder_select) == [
        ("", "all folders"),
        (".", ". (1)"),
        (html_escape(far), f"{html_escape(far)} (1)"),
        ("photos/a", "photos/a (2)"),
        ("photos/b", "photos/b (1)"),
        (html_escape(expected["odd"]), f"{html_escape(expected['odd'])} (1)"),
    ]
    state_select = page[
        page.index('id="f-state"') : page.index("</select>", page.index('id="f-state"'))
    ]
    assert re.findall(r'<option value="([^"]*)">', state_select) == ["", "failed", "succeeded"]

    # Without the manifest's folder every card names its absolute folder.
    plain = render_html(jobs, totals(jobs), no_thumbnails(jobs))
    assert tags(plain, "article")[0]["data-folder"] == str(root / "photos" / "a")


def html_escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def links(page: str) -> list[dict[str, str | None]]:
    return tags(page, "a")


def test_thumbnails_link_to_the_full_size_files_relative_to_the_report(tmp_path: Path) -> None:
    root = tmp_path / "batch"
    for sub in ("photos", "out", "masks"):
        (root / sub).mkdir(parents=True)
    masked = job(
        tmp_path,
        "m",
        image=picture(root / "photos" / "m.png"),
        mask=mask(root / "masks" / "m.png"),
        outputs=(picture(root / "out" / "m-1.png"), root / "out" / "deleted.png"),
    )
    far = job(tmp_path, "far", image=picture(tmp_path / "far.png"), outputs=())
    jobs = [masked, far]
    batch_totals = replace(totals(jobs), folder=root)

    target = root / "report.html"
    write_report(jobs, batch_totals, target, thumb_px=THUMB)
    page = target.read_text("utf-8")
    anchors = links(page)
    assert [(a["class"], a["href"], a["data-caption"]) for a in anchors] == [
        ("full", "photos/m.png", "before"),
        ("full mask", "masks/m.png", "mask"),
        ("full", "out/m-1.png", "after 1"),
        ("full", "out/deleted.png", "after 2"),  # gone, still linked: the viewer says so
        ("full", (tmp_path / "far.png").as_uri(), "before"),  # outside the batch: absolute
    ]
    # Each thumbnail (or placeholder) is inside the link to its own full-size file.
    assert re.search(
        r'<a class="full" href="out/deleted.png" data-caption="after 2">'
        r'<div class="ph" title="[^"]*deleted.png">' + MISSING_TEXT,
        page,
    )
    assert re.search(
        r'<a class="full" href="out/m-1.png" data-caption="after 1"><img src="data:', page
    )
    for a in anchors:  # what the browser makes of each link is the real file
        resolved = urljoin(target.as_uri(), a["href"] or "")
        assert resolved in {
            p.as_uri() for p in (masked.image, masked.mask, *masked.outputs, far.image)
        }

    # A report in a subfolder of the batch still travels with it: relative, one level up.
    sub = root / "reports" / "r.html"
    sub.parent.mkdir()
    write_report(jobs, batch_totals, sub, thumb_px=THUMB)
    assert links(sub.read_text("utf-8"))[0]["href"] == "../photos/m.png"
    # One written outside the batch (to be mailed, say) links absolutely.
    mailed = tmp_path / "mail" / "r.html"
    mailed.parent.mkdir()
    write_report(jobs, batch_totals, mailed, thumb_px=THUMB)
    assert [a["href"] for a in links(mailed.read_text("utf-8"))][:2] == [
        (root / "photos" / "m.png").as_uri(),
        (root / "masks" / "m.png").as_uri(),
    ]


def test_hostile_file_names_are_percent_encoded_in_links_and_escaped_in_text(
    tmp_path: Path,
) -> None:
    folder = tmp_path / 'a "b" <c>'
    folder.mkdir()
    name = 'we"ird #1 ?<x>& 100%.png'
    hostile = job(tmp_path, "h", image=picture(folder / name), outputs=())
    page_dir = tmp_path
    page = render_html([hostile], replace(totals([hostile]), folder=tmp_path),
                       no_thumbnails([hostile]), page_dir=page_dir)  # fmt: skip

    href = links(page)[0]["href"] or ""
    assert href == "a%20%22b%22%20%3Cc%3E/we%22ird%20%231%20%3F%3Cx%3E%26%20100%25.png"
    assert unquote(href) == f'a "b" <c>/{name}'
    assert file_link(folder / name, None) == (folder / name).as_uri()
    assert "<x>" not in page and "<c>" not in page
    assert 'data-folder="a &quot;b&quot; &lt;c&gt;"' in page
    # A name that looks like a URL scheme stays a relative path.
    assert (
        file_link(tmp_path / "javascript:alert(1).png", page_dir) == "javascript%3Aalert%281%29.png"
    )


def test_generated_time_is_shown_in_the_machines_local_zone(
    tmp_path: Path, batch: list[ReportJob], machine_zone: Callable[[str], None]
) -> None:
    machine_zone("CET-1CEST,M3.5.0,M10.5.0/3")  # Central Europe: summer time on 1 April
    page = render_html(batch, totals(batch), no_thumbnails(batch))  # made at 12:30:05 UTC

    assert (
        '<time datetime="2025-04-01T14:30:05+02:00">2025-04-01 14:30:05+02:00 (CEST)</time>' in page
    )
    assert "12:30:05" not in page


def test_progress_is_reported_once_per_distinct_picture_in_the_calling_thread(
    tmp_path: Path, batch: list[ReportJob]
) -> None:
    calls: list[tuple[int, int, int]] = []
    write_report(
        batch,
        totals(batch),
        tmp_path / "r.html",
        thumb_px=THUMB,
        workers=3,
        on_progress=lambda done, total: calls.append((done, total, threading.get_ident())),
    )
    # Four inputs (one with its mask) and two outputs: six pictures to make.
    assert [(done, total) for done, total, _ in calls] == [(i, 6) for i in range(7)]
    assert {thread for *_, thread in calls} == {threading.get_ident()}


def test_the_csp_lets_exactly_the_pages_own_style_and_script_run(
    tmp_path: Path, batch: list[ReportJob]
) -> None:
    page = render_html(batch, totals(batch), no_thumbnails(batch), thumb_px=THUMB)
    csp = next(a["content"] for a in tags(page, "meta") if a.get("http-equiv"))
    assert csp is not None
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    assert style and script

    def sha(text: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert csp == (
        "default-src 'none'; img-src data: file: 'self'; "
        f"style-src '{sha(style.group(1))}'; script-src '{sha(script.group(1))}'"
    )
    # Handlers and style attributes would be blocked by that policy, silently: none exist.
    assert not re.search(r"<[^>]*\s(?:on\w+|style)=", page)


def test_the_script_is_the_same_whatever_the_jobs_say(
    tmp_path: Path, batch: list[ReportJob]
) -> None:
    # No job data is ever written into the script (it reads the escaped DOM), so its hash
    # is a constant and hostile text has no way into code.
    other = [job(tmp_path, "other", prompt="</script><script>alert(1)</script>")]
    scripts = {
        re.findall(r"<script>(.*?)</script>", render_html(js, totals(js), no_thumbnails(js)), re.S)[
            0
        ]
        for js in (batch, other, [])
    }
    assert len(scripts) == 1


def manifest_with_pictures(root: Path) -> Path:
    (root / "photos" / "a").mkdir(parents=True)
    picture(root / "photos" / "a" / "one.png")
    picture(root / "photos" / "two.png", colour=30)
    document = {
        "providers": {
            "p": {
                "dialect": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "RUNNER_TEST_UNSET",
            }
        },
        "output_dir": "out",
        "jobs": [{"image": "photos/**/*.png", "prompt": "Make it <snowy> & cold"}],
    }
    path = root / "jobs.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_runner_report_writes_beside_the_manifest_and_shows_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = manifest_with_pictures(tmp_path / "batch")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    result = invoke("report", manifest, env={"RUNNER_DB": None})

    assert result.returncode == 0, result.stderr
    page = (tmp_path / "batch" / "report.html").read_text("utf-8")
    assert list(elsewhere.iterdir()) == []
    assert f"wrote {tmp_path / 'batch' / 'report.html'} (2 jobs" in result.stdout
    # Off a terminal: a line per tenth of the thumbnails, from 0 % to 100 %.
    assert result.stderr.splitlines() == [
        "report: 0/2 thumbnails (0%)",
        "report: 1/2 thumbnails (50%)",
        "report: 2/2 thumbnails (100%)",
    ]
    # Both jobs share the prompt: one group; cards name their folder; links are relative.
    assert page.count("Make it &lt;snowy&gt; &amp; cold") == 1
    assert sorted(a["data-folder"] or "" for a in tags(page, "article")) == ["photos", "photos/a"]
    assert sorted(a["href"] or "" for a in links(page)) == ["photos/a/one.png", "photos/two.png"]

    # -o still wins, relative to the current folder as any path argument.
    again = invoke("report", manifest, "-o", "mine.html", env={"RUNNER_DB": None})
    assert again.returncode == 0, again.stderr
    assert (elsewhere / "mine.html").is_file()


def test_a_large_batch_shows_every_failed_job_and_an_even_sample_and_says_so(
    tmp_path: Path,
) -> None:
    from runner.files.html_report import sample_for_report

    base = job(tmp_path, "j")  # one picture: sampling never opens it
    jobs = [
        replace(base, key=f"{i:064d}", state="failed" if i % 100 == 7 else "succeeded")
        for i in range(1000)
    ]
    shown, rule = sample_for_report(jobs, limit=100)

    assert len(shown) == 100
    assert [j.key for j in shown] == sorted(j.key for j in shown)  # manifest order kept
    failed = {j.key for j in jobs if j.state == "failed"}
    assert failed <= {j.key for j in shown}  # all ten failed jobs
    assert rule is not None and rule.startswith("showing 100 of 1,000 jobs")
    assert "every failed job (10)" in rule and "every 11th other job" in rule
    assert sample_for_report(jobs[:50], limit=100) == (jobs[:50], None)  # small: all, no rule
    everything, none = sample_for_report(jobs, limit=None)
    assert len(everything) == 1000 and none is None
