"""`validate` spreads a large manifest's checks over forked worker processes: what it finds
is what a check in one process finds, job for job, and a worker that dies costs nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace, options
from test_tables import chunked, table_manifest, write_csv

from runner import app
from runner.app import checking
from runner.errors import ManifestError
from runner.manifest.expand import Draft
from runner.testing import FakeProvider

pytestmark = [
    pytest.mark.slow,  # forks processes
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux"),
]


UNSPIED = checking.ChunkChecker.__call__


def where_chunks_ran(monkeypatch: pytest.MonkeyPatch, log: Path, kill: str = "") -> None:
    """Record the process that checks each chunk (a file: workers are other processes); a
    worker given a chunk with an image named `kill` dies on the spot."""
    real = UNSPIED
    parent = os.getpid()

    def spied(self: checking.ChunkChecker[Any], drafts: Sequence[Draft]) -> Any:
        with log.open("a") as out:
            out.write(f"{os.getpid()}\n")
        if os.getpid() != parent and any(d.image.name == kill for d in drafts):
            os._exit(1)  # as the kernel's OOM killer would leave it
        return real(self, drafts)

    monkeypatch.setattr(checking.ChunkChecker, "__call__", spied)


def mixed_table(workspace: Workspace) -> Path:
    """14 rows in 4 chunks of 4: good images, a repeat of row 0 in a later chunk, a
    missing file, a row without a prompt, a truncated PNG."""
    rows = [{"file": workspace.image(f"w/{i}.png"), "prompt": f"p{i}"} for i in range(10)]
    cut = workspace.root / "w" / "cut.png"
    cut.write_bytes((workspace.root / rows[3]["file"]).read_bytes()[:-40])
    rows += [
        dict(rows[0]),
        {"file": "w/gone.png", "prompt": "p"},
        {"file": rows[1]["file"], "prompt": ""},
        {"file": "w/cut.png", "prompt": "p"},
    ]
    write_csv(workspace.root / "t.csv", rows)
    return table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})


def findings(found: app.Validation) -> tuple[Any, ...]:
    return (
        found.jobs,
        found.done,
        found.left,
        [(c.entry, c.image, c.problem) for c in found.bad],
        round(found.estimated_cost_usd, 9),
        found.unpriced,
    )


async def test_workers_find_what_one_process_finds_job_for_job(
    workspace: Workspace, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chunked(monkeypatch, 4)
    manifest = mixed_table(workspace)
    await app.run(manifest, options())  # the good ones done: validate must not count them
    rows = (workspace.root / "t.csv").read_text().splitlines()
    new = [workspace.image(f"w/n{i}.png") for i in range(3)]
    (workspace.root / "t.csv").write_text("\n".join([*rows, *(f"{n},fresh" for n in new)]) + "\n")
    spread, alone = tmp_path / "spread.log", tmp_path / "alone.log"

    where_chunks_ran(monkeypatch, spread)
    with_workers = await app.validate(manifest)
    where_chunks_ran(monkeypatch, alone)
    monkeypatch.setattr(checking, "_workers", lambda: 0)
    in_one = await app.validate(manifest)

    assert findings(with_workers) == findings(in_one)
    assert (with_workers.jobs, with_workers.done, with_workers.left) == (16, 10, 6)
    problems = [str(c.problem) for c in with_workers.bad]
    assert len(problems) == 3 and any("truncated" in p for p in problems)
    assert any("gone.png" in p for p in problems) and any("prompt" in p for p in problems)
    assert fake.requests_total == 10  # validate sent nothing
    workers = set(spread.read_text().split()) - {str(os.getpid())}
    assert len(workers) >= 1 and len(spread.read_text().split()) == 5  # 17 rows, 5 chunks
    assert set(alone.read_text().split()) == {str(os.getpid())}


async def test_a_worker_that_dies_leaves_its_chunks_to_this_process(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chunked(monkeypatch, 4)
    manifest = mixed_table(workspace)
    monkeypatch.setattr(checking, "_workers", lambda: 0)
    expected = findings(await app.validate(manifest))
    monkeypatch.undo()
    chunked(monkeypatch, 4)
    log = tmp_path / "where.log"
    where_chunks_ran(monkeypatch, log, kill="cut.png")  # the last chunk's worker dies

    found = await app.validate(manifest)

    assert findings(found) == expected
    ran = log.read_text().split()
    assert ran.count(str(os.getpid())) >= 1  # the dead worker's chunk, checked here
    assert len(set(ran)) >= 2


@pytest.mark.parametrize("clash", ["output", "input"])
async def test_names_that_clash_across_chunks_checked_in_workers_are_refused(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clash: str
) -> None:
    """The output check sees every job in order, whichever process worked out its names:
    two rows in different chunks writing one file, or a row whose output would replace a
    later row's input."""
    chunked(monkeypatch, 4)
    rows = [{"file": workspace.image(f"c/{i}.png"), "prompt": f"p{i}"} for i in range(10)]
    if clash == "output":  # row 9 (d/0.png) would write out/0.png, as row 0 (c/0.png) does
        rows[9]["file"] = workspace.image("d/0.png")
        defaults, message = {"output_name": "{stem}.{ext}"}, "writes the same output file"
        folder = "out"
    else:  # row 0 (c/0.png) would write c/0x.png, row 9's input
        rows[9]["file"] = workspace.image("c/0x.png")
        defaults, message = {"output_name": "{stem}x.{ext}"}, "which is an input"
        folder = "c"
    write_csv(workspace.root / "t.csv", rows)
    source = {"table": "t.csv", "image": "file", "prompt": "prompt"}
    manifest = table_manifest(workspace, source, defaults=defaults, output_dir=folder)
    log = tmp_path / "where.log"
    where_chunks_ran(monkeypatch, log)

    with pytest.raises(ManifestError, match=message) as spread:
        await app.validate(manifest)
    monkeypatch.setattr(checking, "_workers", lambda: 0)
    with pytest.raises(ManifestError, match=message) as alone:
        await app.validate(manifest)

    assert str(spread.value) == str(alone.value)
    assert set(log.read_text().split()) - {str(os.getpid())}  # workers did the names


def long_table(workspace: Workspace, rows: int) -> Path:
    """`rows` jobs over one image (a prompt each): many chunks, made in a moment."""
    image = workspace.image("one.png")
    write_csv(workspace.root / "t.csv", [{"file": image, "prompt": f"p{i}"} for i in range(rows)])
    return table_manifest(workspace, {"table": "t.csv", "image": "file", "prompt": "prompt"})


def children_of(pid: int) -> list[int]:
    """Its child processes, whichever of its threads forked them."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(n) for n in (task / "children").read_text().split()]
    return found


def validating(workspace: Workspace) -> tuple[subprocess.Popen[str], list[int]]:
    """`runner validate` on a long table, in a process group of its own, once its workers
    are forked (a terminal's Ctrl-C reaches the whole group)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "validate", str(long_table(workspace, 60_000))],
        env={**os.environ, "RUNNER_DB": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(workers := children_of(process.pid)) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    return process, workers


def gone(pid: int) -> bool:
    """Exited (a zombie of a dead parent is reaped by init soon after)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_validate_and_its_workers_at_once_saying_so_once(
    workspace: Workspace, signum: signal.Signals
) -> None:
    process, workers = validating(workspace)

    os.killpg(process.pid, signum)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 75, stderr
    assert time.monotonic() - started < 5  # not after checking the other 59,000 rows
    assert stderr.count("interrupted by") == 1 and "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived validate"
        time.sleep(0.01)


def test_workers_exit_when_validate_is_killed(workspace: Workspace) -> None:
    process, workers = validating(workspace)

    process.kill()  # SIGKILL: nothing of it runs to stop them
    process.communicate(timeout=30)

    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived validate"
        time.sleep(0.01)


async def test_an_error_in_a_worker_is_raised_once_by_validate_not_printed_by_the_worker(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    chunked(monkeypatch, 4)
    manifest = mixed_table(workspace)
    parent = os.getpid()

    def broken(self: checking.ChunkChecker[Any], drafts: Sequence[Draft]) -> Any:
        raise RuntimeError(f"checker bug in {'a worker' if os.getpid() != parent else 'here'}")

    monkeypatch.setattr(checking.ChunkChecker, "__call__", broken)

    with pytest.raises(RuntimeError, match="checker bug in here"):
        await app.validate(manifest)
    assert "Traceback" not in capfd.readouterr().err  # no worker printed its own
