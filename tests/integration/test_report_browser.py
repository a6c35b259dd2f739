"""The report in a real browser: opened from disk, offline, every thumbnail decodes.

Drives headless Chromium through its command line (no extra Python packages): one run
dumps the DOM after the page's load handler has counted the decoded images, another
takes a screenshot. Each run gets its own process group and folder (profile, home, crash
database); afterwards the group and anything naming the folder are killed, so no
browser process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from PIL import Image, ImageDraw

from runner.files.html_report import OUTLINE_RGB, ReportJob, ReportTotals, write_report

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
        values: dict[str, object] = {
            "key": f"{i:064x}",
            "image": picture(tmp_path / f"in{i}.png", 10 * i),
            "mask": None,
            "prompt": f"Job {i}: paint it <blue> & gold",
            "provider": "openai",
            "model": "gpt-image-1",
            "state": "succeeded",
            "attempts": 1,
            "cost_usd": 0.04,
            "error": None,
            "outputs": (picture(tmp_path / f"out{i}.png", 10 * i + 5),),
        }
        values.update(fields)
        return ReportJob(**values)  # type: ignore[arg-type]

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
