"""The report in a real browser: opened from disk, offline, every thumbnail decodes, and
the filters and the full-size viewer work when a person types, picks and clicks.

Loading and painting are checked through Chromium's command line (--dump-dom after the
page's load handler has counted the decoded images, --screenshot). Each such run gets its
own process group and folder (profile, home, crash database); afterwards the group and
anything naming the folder are killed, so no browser process outlives the test.

Typing and clicking need a driver: playwright, with the system Chromium (no browser
download) and the same isolation: one browser for the module, its helpers and anything
naming its folder are gone when the module ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from PIL import Image, ImageDraw

from runner.files.html_report import (
    MISSING_TEXT,
    OUTLINE_RGB,
    ReportJob,
    ReportTotals,
    write_report,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

TIMEOUT_S = 60
# Chromium phones home (updates, field trials, safe browsing) at start; none of that may
# slow the test or reach the network, and a root user in a container needs --no-sandbox.
QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
    "--virtual-time-budget=5000",
)


def report_job(**fields: object) -> ReportJob:
    """A succeeded, unmasked job at $0.04, with `fields` set (key, image, prompt, outputs)."""
    values: dict[str, object] = {
        "mask": None,
        "provider": "openai",
        "model": "gpt-image-1",
        "state": "succeeded",
        "attempts": 1,
        "cost_usd": 0.04,
        "error": None,
        **fields,
    }
    return ReportJob(**values)  # type: ignore[arg-type]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    pytest.skip("Chromium is not installed (Debian package `chromium`)")


def run_chromium(browser: str, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Chromium to completion with its profile, home and crash database in `workdir`."""
    home = workdir / "home"
    home.mkdir(parents=True)
    # Chromium's crash handler detaches into a session of its own and keeps its database
    # under $XDG_CONFIG_HOME; pointing that into `workdir` keeps ~/.config untouched and
    # names every process of this run by a path no other process has.
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    cmd = [browser, *QUIET_FLAGS, f"--user-data-dir={workdir / 'profile'}", *args]
    # A session of its own makes the browser's helpers (zygote, renderers, GPU, network)
    # one process group that can be killed as a whole.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(proc.pid, workdir)
        out, err = proc.communicate()
        pytest.fail(f"Chromium did not finish in {TIMEOUT_S} s: {err[-2000:]}")
    finally:
        stop(proc.pid, workdir)
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop(pgid: int, workdir: Path) -> None:
    """Kill what is left of one run, then wait until none of it is running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for pid in leftovers(pgid, workdir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # Killed helpers are reparented to init and reaped there; zombies do not count.
    deadline = time.monotonic() + 10
    while (left := leftovers(pgid, workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"Chromium processes left behind: {left}"


def leftovers(pgid: int, workdir: Path) -> list[int]:
    """Live processes of this run: in its process group, or naming its folder."""
    found = []
    for p in psutil.process_iter(["pid", "status", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(p.pid) == pgid or str(workdir) in " ".join(p.info["cmdline"] or ()):
                found.append(p.pid)
    return found


def picture(path: Path, shade: int) -> Path:
    im = Image.new("RGB", (400, 300), (40, 110 + shade, 160))
    draw = ImageDraw.Draw(im)
    for x in range(0, 400, 50):
        draw.rectangle((x, 0, x + 20, 300), fill=(230, 200, 40 + shade))
    im.save(path)
    return path


def make_report(tmp_path: Path) -> tuple[Path, int]:
    """A report with a masked job, a failed one, a two-output one and a missing file;
    returns the page and how many <img> it should have."""
    mask = Image.new("RGBA", (400, 300), (0, 0, 0, 255))
    ImageDraw.Draw(mask).ellipse((100, 60, 300, 240), fill=(0, 0, 0, 0))
    mask.save(tmp_path / "mask.png")

    def job(i: int, **fields: object) -> ReportJob:
        return report_job(**{
            "key": f"{i:064x}",
            "image": picture(tmp_path / f"in{i}.png", 10 * i),
            "prompt": f"Job {i}: paint it <blue> & gold",
            "outputs": (picture(tmp_path / f"out{i}.png", 10 * i + 5),),
            **fields,
        })  # fmt: skip

    jobs = [
        job(1, mask=tmp_path / "mask.png"),
        job(2, state="failed", attempts=3, error="HTTP 400 <moderation>", outputs=()),
        job(3, outputs=(picture(tmp_path / "out3a.png", 1), picture(tmp_path / "out3b.png", 2))),
        job(4, outputs=(tmp_path / "deleted.png",)),
    ]
    totals = ReportTotals(
        counts={"succeeded": 3, "failed": 1},
        cost_usd=0.12,
        manifest="jobs.yaml",
        generated_at=datetime(2025, 4, 1, 9, 0, tzinfo=UTC),
    )
    page = tmp_path / "site" / "report.html"
    stats = write_report(jobs, totals, page)
    assert stats.missing_images == 1
    # Befores: 4; afters: 1 + 0 + 2 + 0 (the deleted one is a placeholder).
    assert stats.thumbnails == 7
    return page, stats.thumbnails


def test_every_thumbnail_loads_in_chromium_from_disk(tmp_path: Path) -> None:
    browser = find_chromium()
    page, expected = make_report(tmp_path)

    dump = run_chromium(browser, tmp_path / "chromium-dom", "--dump-dom", page.as_uri())

    body = re.search(r"<body[^>]*>", dump.stdout)
    assert body, dump.stdout[:2000]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the load handler did not run: {body.group(0)}"
    assert int(loaded.group(1)) == int(total.group(1)) == expected
    # The escaped text reached the DOM as text (Chromium re-serialises it escaped).
    assert "paint it &lt;blue&gt; &amp; gold" in dump.stdout
    assert "HTTP 400 &lt;moderation&gt;" in dump.stdout


def test_screenshot_shows_the_report(tmp_path: Path) -> None:
    browser = find_chromium()
    page, _ = make_report(tmp_path)
    shot = tmp_path / "shot.png"

    run_chromium(browser, tmp_path / "chromium-shot", f"--screenshot={shot}", page.as_uri())

    assert shot.is_file()
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1280, 2000)
    colours = rgb.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "blank screenshot"
    # The thumbnails themselves were painted: the pictures' yellow stripes and the
    # mask's magenta outline are on screen.
    raw = rgb.tobytes()
    pixels = list(zip(raw[0::3], raw[1::3], raw[2::3], strict=True))
    r, g, b = OUTLINE_RGB
    assert any(abs(pr - r) < 60 and abs(pg - g) < 90 and abs(pb - b) < 60 for pr, pg, pb in pixels)
    assert any(pr > 200 and pg > 170 and pb < 110 for pr, pg, pb in pixels)


# --- typing and clicking (playwright driving the system Chromium) -------------------------

WINTER = "Make it <b>winter</b> & snowy"


def isolated_env(workdir: Path) -> dict[str, str]:
    """As in run_chromium: home, config and cache inside `workdir` (crash database too)."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = find_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs it")
    workdir = tmp_path_factory.mktemp("playwright")
    me = psutil.Process()
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=executable,
            # Playwright adds --headless and a profile of its own; the rest keep the
            # browser quiet and offline, as on the command line.
            args=[
                f for f in QUIET_FLAGS if f.startswith("--") and "=" not in f and f != "--headless"
            ],
            env=isolated_env(workdir),
            timeout=TIMEOUT_S * 1000,
        )
        try:
            yield launched
        finally:
            family = me.children(recursive=True)
            launched.close()
    # The driver and the browser have been told to go; make sure nothing of them stayed.
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    strays = [pid for pid in leftovers(-1, workdir) if pid != os.getpid()]
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    assert not alive and not strays, f"browser processes left behind: {alive} {strays}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    problems: list[str] = []
    # A CSP refusal (a stale hash, a blocked picture) shows up only as a console message;
    # a script error only as a page error. (A file that is not there is a test's business.)
    opened.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    opened.on("pageerror", lambda e: problems.append(str(e)))
    try:
        yield opened
        assert problems == []
    finally:
        context.close()


@pytest.fixture(scope="module")
def batch_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch folder as a manifest makes it: photos in two folders, outputs in out/, a
    mask in masks/, the report beside them (so its links are relative). Five jobs: three
    sharing a prompt (one masked), a failed one, and one whose output was deleted since."""
    root = tmp_path_factory.mktemp("batch")
    for sub in ("photos/a", "photos/b", "out", "masks"):
        (root / sub).mkdir(parents=True)
    mask = Image.new("RGBA", (400, 300), (0, 0, 0, 255))
    ImageDraw.Draw(mask).ellipse((100, 60, 300, 240), fill=(0, 0, 0, 0))
    mask.save(root / "masks" / "m.png")

    def job(i: int, folder: str, **fields: object) -> ReportJob:
        return report_job(**{
            "key": f"k{i}-{i:060x}",
            "image": picture(root / "photos" / folder / f"in{i}.png", 10 * i),
            "prompt": WINTER,
            # Outputs are larger than inputs: the viewer must show each at its own size.
            "outputs": (big_picture(root / "out" / f"out{i}.png", 10 * i),),
            **fields,
        })  # fmt: skip

    jobs = [
        job(1, "a"),
        job(2, "b", prompt="Paint it <blue> & gold", state="failed", attempts=3,
            error="HTTP 400 <moderation>", outputs=()),
        job(3, "a", mask=root / "masks" / "m.png"),
        job(4, "b"),
        job(5, "b", prompt="Add a red scarf", outputs=(root / "out" / "deleted.png",)),
    ]  # fmt: skip
    totals = ReportTotals(
        counts={"succeeded": 4, "failed": 1},
        cost_usd=0.2,
        manifest="jobs.yaml",
        generated_at=datetime(2025, 4, 1, 9, 0, tzinfo=UTC),
        folder=root,
    )
    target = root / "report.html"
    write_report(jobs, totals, target)
    return target


def big_picture(path: Path, shade: int) -> Path:
    with Image.open(picture(path, shade)) as im:
        im.resize((512, 384)).save(path)
    return path


def visible_cards(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "article.job", "cards => cards.filter(c => c.checkVisibility()).map(c => c.id)"
    )
    return [i.removeprefix("job-").split("-")[0] for i in ids]


def test_filters_by_text_state_and_folder_in_chromium(page: Page, batch_page: Path) -> None:
    page.goto(batch_page.as_uri())
    assert page.is_visible("#filters")  # shown by the script (hidden without one)
    assert visible_cards(page) == ["k2", "k1", "k3", "k4", "k5"]
    assert page.inner_text("#f-shown") == "5 jobs"
    # The style applied (its hash matched): the viewer is an overlay, hidden for now.
    assert page.eval_on_selector("#viewer", "v => getComputedStyle(v).position") == "fixed"

    # "snowy" is only in the group's heading, not on the cards: the heading counts.
    page.fill("#f-text", "SNOWY")
    assert visible_cards(page) == ["k1", "k3", "k4"]
    assert page.inner_text("#f-shown") == "3 of 5 jobs"
    assert not page.is_visible("#failed")  # a section with nothing left goes too
    assert page.is_visible("h3.prompt")
    assert page.inner_text("h3.prompt") == WINTER  # the <b> arrived as text

    # Words match anywhere (error, path), all of them must.
    page.fill("#f-text", "moderation 400")
    assert visible_cards(page) == ["k2"]
    page.fill("#f-text", "photos/b/in")
    assert visible_cards(page) == ["k2", "k4", "k5"]

    page.fill("#f-text", "")
    page.select_option("#f-state", "failed")
    assert visible_cards(page) == ["k2"]
    assert not page.is_visible("#jobs")
    assert not page.is_visible("h3.prompt")  # its group is empty now

    page.select_option("#f-state", "")
    page.select_option("#f-folder", "photos/a")
    assert visible_cards(page) == ["k1", "k3"]
    assert page.inner_text(".group-head .n") == "2 of 3 jobs"  # k4 is in photos/b
    page.fill("#f-text", "scarf")  # only in photos/b
    assert visible_cards(page) == []
    assert page.is_visible("#f-none")
    assert page.inner_text("#f-shown") == "0 of 5 jobs"

    page.select_option("#f-folder", "")
    page.fill("#f-text", "")
    assert visible_cards(page) == ["k2", "k1", "k3", "k4", "k5"]
    assert not page.is_visible("#f-none")
    assert page.inner_text(".group-head .n") == "3 jobs"


def viewer_pictures(page: Page) -> list[dict[str, Any]]:
    """Each panel of the open viewer: the picture's natural and shown size and place, its
    source, or the placeholder's text."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#viewer-pics img')].every(i => i.complete)"
    )
    panels: list[dict[str, Any]] = page.eval_on_selector_all(
        "#viewer-pics figure",
        """figures => figures.map(f => {
          const img = f.querySelector("img"), ph = f.querySelector(".ph");
          if (!img) { return {text: ph.textContent}; }
          const box = img.getBoundingClientRect();
          return {natural: [img.naturalWidth, img.naturalHeight], shown: [box.width, box.height],
                  x: box.x, y: box.y, src: img.currentSrc};
        })""",
    )
    return panels


def test_clicking_a_thumbnail_shows_before_and_after_at_full_size(
    page: Page, batch_page: Path
) -> None:
    page.goto(batch_page.as_uri())
    assert not page.is_visible("#viewer")

    page.click("#job-k1-" + "0" * 59 + "1 img >> nth=0")  # the before thumbnail
    assert page.is_visible("#viewer")
    before, after = viewer_pictures(page)
    # The real files from disk, each at its own full size, side by side.
    assert before["src"] == (batch_page.parent / "photos" / "a" / "in1.png").as_uri()
    assert after["src"] == (batch_page.parent / "out" / "out1.png").as_uri()
    assert before["natural"] == before["shown"] == [400, 300]
    assert after["natural"] == after["shown"] == [512, 384]
    assert before["y"] == after["y"] and after["x"] >= before["x"] + 400
    assert "succeeded" in page.inner_text("#viewer-title")
    assert WINTER in page.inner_text("#viewer-title")

    # In a narrow window full size overflows (the viewer scrolls); "fit" shrinks both to
    # share the window's width.
    page.set_viewport_size({"width": 700, "height": 600})
    assert max(p["x"] + p["shown"][0] for p in viewer_pictures(page)) > 700
    page.keyboard.press("f")
    fitted = viewer_pictures(page)
    assert all(p["shown"][0] < p["natural"][0] for p in fitted), fitted
    assert max(p["x"] + p["shown"][0] for p in fitted) <= 700
    page.keyboard.press("f")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert page.eval_on_selector("#viewer-pics", "p => p.children.length") == 0

    # Clicking the after thumbnail opens the same card's pictures.
    page.click("#job-k4-" + "0" * 59 + "4 img >> nth=1")
    assert [p["natural"] for p in viewer_pictures(page)] == [[400, 300], [512, 384]]
    page.click("#viewer-close")
    assert not page.is_visible("#viewer")


def test_the_viewer_shows_the_mask_and_says_which_file_is_missing(
    page: Page, batch_page: Path
) -> None:
    page.goto(batch_page.as_uri())

    page.click("#job-k3-" + "0" * 59 + "3 img >> nth=0")
    panels = viewer_pictures(page)
    assert [p["src"].rsplit("/", 2)[-2:] for p in panels] == [
        ["a", "in3.png"], ["out", "out3.png"], ["masks", "m.png"],  # the mask last
    ]  # fmt: skip
    assert [p["natural"] for p in panels] == [[400, 300], [512, 384], [400, 300]]
    page.keyboard.press("Escape")

    # Job 5's output was deleted: its card's placeholder opens the viewer too, where the
    # picture that is there shows and the one that is not says so.
    page.click("#job-k5-" + "0" * 59 + "5 .ph")
    page.wait_for_selector("#viewer-pics .ph")
    panels = viewer_pictures(page)
    assert panels[0]["natural"] == [400, 300]
    assert panels[1] == {"text": MISSING_TEXT}
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")


def test_the_viewer_follows_absolute_links_too(page: Page, tmp_path: Path) -> None:
    # make_report's page is in site/, its pictures beside site/: absolute file: links.
    report, _ = make_report(tmp_path)
    page.goto(report.as_uri())
    href = page.get_attribute("a.full >> nth=0", "href") or ""
    assert href.startswith("file:///")

    page.click("article.job >> nth=1 >> img >> nth=0")  # job 1, after the failed one
    assert viewer_pictures(page)[0]["natural"] == [400, 300]


def test_without_the_script_the_thumbnails_are_plain_links(
    browser: Browser, batch_page: Path
) -> None:
    # As in a mail reader that drops scripts: no filter bar that cannot work, and a click
    # on a thumbnail opens the full-size file itself.
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(batch_page.as_uri())
        assert not page.is_visible("#filters")
        assert page.locator("article.job").count() == 5
        page.click("#job-k1-" + "0" * 59 + "1 img >> nth=0")
        page.wait_for_url("**/photos/a/in1.png")
    finally:
        context.close()
