"""Per-step costs of one job, in isolation, to explain bench/throughput.py's CPU per job.

    .venv/bin/python bench/micro.py            # ~30 s on a 2-core machine

Each step runs on the same data as the throughput benchmark (a 700x700 RGB noise PNG as
input, the fake provider's ~1.45 MB PNG edit of it as output, wrapped in the fake's JSON
reply) and reports the best-of-several wall time per call, and whether it holds the GIL
(a step that holds it cannot overlap other Python work, whichever thread runs it):
two threads run the step side by side, and a ~1x speed-up means it holds the GIL.
File writes are disk-bound and not tested for the GIL.
Nothing here talks to the network except the optional sniffio probe, which runs in-process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def best_ms(fn: Callable[[], Any], *, number: int = 20, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1000


def gil_share(fn: Callable[[], Any], calls: int = 12) -> float:
    """How much of `fn` holds the GIL: 2 threads run it side by side (needs >= 2 cores).

    Speed-up 2x -> 0% (releases it), 1x -> 100% (holds it throughout).
    """

    def loop() -> None:
        for _ in range(calls):
            fn()

    t0 = time.perf_counter()
    loop()
    loop()
    serial = time.perf_counter() - t0
    threads = [threading.Thread(target=loop) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parallel = time.perf_counter() - t0
    return max(0.0, min(1.0, 2 - serial / parallel))


def make_data(tmp: Path) -> dict[str, Any]:
    from PIL import Image

    from runner.testing import edited_image

    src = tmp / "input.png"
    Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(src)
    image = src.read_bytes()
    png = edited_image(image, None)
    b64 = base64.b64encode(png)
    body = b'{"created":1,"data":[{"b64_json":"' + b64 + b'"}],"usage":{"total_tokens":1}}'
    return {"src": src, "image": image, "png": png, "b64": b64, "body": body}


def rows(d: dict[str, Any], tmp: Path) -> list[tuple[str, Callable[[], Any], int]]:
    from runner.dialects.openai.client import _parse_reply
    from runner.dialects.openai.rules import LIMITS as OPENAI_LIMITS
    from runner.files.outputs import write_atomic, write_outputs
    from runner.files.preflight import _check_image, _examine, read_image_info
    from runner.manifest.expand import load_manifest

    body, png, image = d["body"], d["png"], d["image"]
    text = json.loads(body)["data"][0]["b64_json"]
    start = body.index(b'"b64_json":"') + 12
    view = memoryview(body)[start : body.index(b'"', start)]
    out = tmp / "out"
    out.mkdir()
    (tmp / "m.yaml").write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9/v1', concurrency: 1}}\n"
        "defaults: {provider: p, model: gpt-image-2}\noutput_dir: out\n"
        f'jobs: [{{image: "{d["src"]}", prompt: "job 0"}}]\n'
    )
    spec = load_manifest(tmp / "m.yaml").jobs[0]
    reply = read_image_info(png)
    assert reply is not None
    counter = iter(range(10**9))

    def plain_write() -> None:
        (out / f"p{next(counter)}.png").write_bytes(png)

    def atomic_fsync() -> None:
        write_atomic(out / f"a{next(counter)}.png", png)

    def runner_write_outputs() -> None:
        for p in out.iterdir():  # keep names free
            p.unlink()
        write_outputs(spec, (reply,))

    import httpx

    def multipart() -> None:
        req = httpx.Request(
            "POST",
            "http://127.0.0.1:9/v1/images/edits",
            data={"prompt": "job 0", "model": "gpt-image-2"},
            files={"image": ("input.png", image, "image/png")},
        )
        for _ in req.stream:  # type: ignore[union-attr]
            pass

    def prepare() -> None:
        from runner.files.preflight import prepare_request

        prepare_request(spec, OPENAI_LIMITS)

    items: list[tuple[str, Callable[[], Any], int]] = [
        ("reply: json.loads(2 MB body)", lambda: json.loads(body), 10),
        ("reply: binascii.a2b_base64(str)", lambda: binascii.a2b_base64(text), 10),
        ("reply: base64.b64decode(str)", lambda: base64.b64decode(text), 10),
        ("reply: a2b_base64(bytes slice of body, no JSON)", lambda: binascii.a2b_base64(view), 10),
        (
            "reply: runner _parse_reply (all of the above + Pillow)",
            lambda: _parse_reply(body, None),
            10,
        ),
        ("reply: read_image_info(png) (Pillow verify: CRCs)", lambda: read_image_info(png), 10),
        ("output: sha256(1.45 MB)", lambda: hashlib.sha256(png).hexdigest(), 10),
        ("output: plain write_bytes", plain_write, 5),
        ("output: runner write_atomic (temp+fsync+rename)", atomic_fsync, 5),
        ("output: runner write_outputs (atomic+sha256)", runner_write_outputs, 5),
        ("input: runner prepare_request (read+sha256+Pillow)", prepare, 10),
        ("input: sha256(1.47 MB)", lambda: hashlib.sha256(image).hexdigest(), 10),
        (
            "input: _check_image (header, rules, CRCs)",
            lambda: _check_image(spec.image, image, OPENAI_LIMITS),
            10,
        ),
        ("input: _examine (header and CRCs)", lambda: _examine(image), 10),
        ("request: httpx multipart build + iterate", multipart, 10),
    ]
    try:
        import pybase64  # type: ignore[import-not-found]

        items.insert(
            4,
            (
                "reply: pybase64.b64decode(str) [not a dependency]",
                lambda: pybase64.b64decode(text),
                10,
            ),
        )
    except ImportError:
        pass
    return items


async def _thread_hop_ms(n: int = 2000) -> float:
    import anyio.to_thread

    t0 = time.perf_counter()
    for _ in range(n):
        await anyio.to_thread.run_sync(int)
    return (time.perf_counter() - t0) / n * 1000


async def _store_round(tmp: Path, src: Path, jobs: int = 200) -> tuple[float, float, int]:
    """The runner's three transactions per job (claim, begin_attempt, complete) on an idle
    event loop: (wall ms per job, CPU ms per job, SQL statements per job)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event

    from runner.manifest.expand import load_manifest
    from runner.records import AttemptRecord, Outcome, OutputRef
    from runner.store.protocol import RunInfo

    try:
        from runner.store.engine import database_url, open_store
    except ImportError:  # before the store was split into modules
        from runner.store.sql import database_url, open_store  # type: ignore[attr-defined,no-redef]

    m = tmp / "store.yaml"
    m.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9/v1', concurrency: 1}}\n"
        "defaults: {provider: p, model: gpt-image-2}\noutput_dir: out\njobs:\n"
        + "".join(f'  - {{image: "{src}", prompt: "job {n}"}}\n' for n in range(jobs))
    )
    manifest = load_manifest(m)
    store = await open_store(database_url("store.db", tmp))
    statements = 0

    def count(*_a: Any) -> None:
        nonlocal statements
        statements += 1

    try:
        await store.sync_manifest(str(m), manifest.jobs)
        await store.start_run(RunInfo("bench", str(m), "h", os.getpid(), "t"))
        event.listen(store._engine.sync_engine, "before_cursor_execute", count)
        lease = datetime.now(UTC) + timedelta(hours=1)
        record = AttemptRecord(outcome=Outcome.SUCCEEDED, latency_ms=1, http_status=200)
        t0, c0 = time.perf_counter(), time.process_time()
        for n in range(jobs):
            job = await store.claim(str(m), "p", "bench", lease)
            assert job is not None
            attempt = await store.begin_attempt(job.spec.key, "bench", "p", "gpt-image-2")
            ref = OutputRef(1, tmp / f"{n}.png", "0" * 64, 1, 1, 1, "PNG")
            await store.complete(job.spec.key, "bench", attempt, record, (ref,))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await store.close()
    return wall / jobs * 1000, cpu / jobs * 1000, round(statements / jobs)


def _raw_sqlite_round(db: Path) -> tuple[float, float]:
    """Roughly the store round's statements (claim, attempt, completion) through the stdlib
    sqlite3 module in one thread (no SQLAlchemy, no aiosqlite hops), on the same database
    reset to pending: (wall ms per job, CPU ms per job)."""
    import sqlite3

    def now() -> int:  # as the runner keeps times on SQLite: microseconds since 1970 (UTC)
        return time.time_ns() // 1000

    con = sqlite3.connect(db, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            con.execute(f"PRAGMA {pragma}")
        con.execute("DELETE FROM outputs")
        con.execute("DELETE FROM attempts")
        con.execute("UPDATE jobs SET status = 'pending', attempt_floor = 0, lease_owner = NULL")
        (manifest,) = con.execute("SELECT manifest_id FROM manifest_jobs LIMIT 1").fetchone()
        (jobs,) = con.execute("SELECT count(*) FROM jobs").fetchone()
        t0, c0 = time.perf_counter(), time.process_time()
        for n in range(jobs):
            con.execute("BEGIN IMMEDIATE")
            key = con.execute(
                "UPDATE jobs SET status = 'running', lease_owner = 'bench', lease_expires_at = ?,"
                " updated_at = ? WHERE key = (SELECT jobs.key FROM jobs JOIN manifest_jobs"
                " ON manifest_jobs.job_key = jobs.key WHERE manifest_jobs.manifest_id = ?"
                " AND jobs.provider = 'p' AND (jobs.status = 'pending' OR (jobs.status ="
                " 'running' AND jobs.lease_expires_at < ?)) ORDER BY manifest_jobs.position"
                " LIMIT 1) RETURNING *",
                (now(), now(), manifest, now()),
            ).fetchone()[0]
            con.execute(
                "UPDATE attempts SET outcome = 'abandoned', finished_at = ?"
                " WHERE job_key = ? AND outcome = 'in_flight'",
                (now(), key),
            )
            con.execute("COMMIT")
            con.execute("BEGIN IMMEDIATE")
            attempt = con.execute(
                "INSERT INTO attempts (job_key, run_id, provider, model, outcome, counted,"
                " started_at) VALUES (?, 'bench', 'p', 'gpt-image-2', 'in_flight', 1, ?)",
                (key, now()),
            ).lastrowid
            con.execute("COMMIT")
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                "UPDATE attempts SET outcome = 'succeeded', counted = 1, finished_at = ?,"
                " latency_ms = 1, http_status = 200 WHERE id = ? RETURNING job_key",
                (now(), attempt),
            ).fetchone()
            con.execute(
                "INSERT INTO outputs (job_key, attempt_id, image_index, path, sha256,"
                " size_bytes, width, height, format) VALUES (?, ?, 1, ?, ?, 1, 1, 1, 'PNG')",
                (key, attempt, f"/x/{n}.png", "0" * 64),
            )
            con.execute(
                "UPDATE jobs SET status = 'succeeded', error = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL, finished_at = ?, updated_at = ?"
                " WHERE key = ? AND status != 'succeeded'",
                (now(), now(), key),
            )
            con.execute("COMMIT")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        con.close()
    return wall / jobs * 1000, cpu / jobs * 1000


_SNIFF = r"""
import asyncio, sys, time
sys.path[:0] = [p for p in sys.argv[1:] if p]
import httpcore._synchronization as s
async def main():
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        s.current_async_library()
    print((time.perf_counter() - t0) / n * 1e6, "sniffio" in sys.modules)
asyncio.run(main())
"""


def sniffio_probe_us() -> tuple[float, float]:
    """current_async_library() cost with sniffio importable, and with it hidden.

    "Hidden" runs python -S with a copy of site-packages' entries (symlinks) minus sniffio,
    so the failing `import sniffio` walks a realistic sys.path.
    """
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    with tempfile.TemporaryDirectory() as shadow:
        for entry in site.iterdir():
            if not entry.name.startswith("sniffio"):
                (Path(shadow) / entry.name).symlink_to(entry)
        results = []
        for extra in ([str(site)], [shadow]):
            out = subprocess.run(
                [sys.executable, "-S", "-c", _SNIFF, *extra],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            us, present = out.stdout.split()
            assert (present == "True") == (extra[0] == str(site)), out.stdout
            results.append(float(us))
    return results[0], results[1]


def count_probes_per_request() -> float:
    """current_async_library() calls per request of one pooled AsyncClient (MockTransport
    would skip httpcore, so this patches the function and drives a real local socket)."""
    import http.server

    import httpcore._synchronization as s
    import httpx

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    calls = 0
    real = s.current_async_library

    def counted() -> str:
        nonlocal calls
        calls += 1
        return real()

    s.current_async_library = counted
    try:

        async def go() -> None:
            async with httpx.AsyncClient() as c:
                for i in range(50):
                    await c.post(f"http://127.0.0.1:{srv.server_address[1]}/", data={"i": str(i)})

        asyncio.run(go())
    finally:
        s.current_async_library = real
        srv.shutdown()
    return calls / 50


def main() -> None:
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as name:  # same disk as outputs
        tmp = Path(name)
        d = make_data(tmp)
        print(
            f"input {len(d['image']):,} B, output PNG {len(d['png']):,} B, "
            f"reply body {len(d['body']):,} B"
        )
        print(f"{'step':<58}{'ms/call':>9}{'GIL held':>10}")
        for label, fn, number in rows(d, tmp):
            ms = best_ms(fn, number=number, repeat=5)
            share = None if "write" in label else gil_share(fn)
            held = "-" if share is None else f"{share:.0%}"
            print(f"{label:<58}{ms:>9.2f}{held:>10}")
        import anyio

        try:
            wall, cpu, stmts = anyio.run(_store_round, tmp, d["src"])
            print(
                f"{'store: claim + begin_attempt + complete, idle loop':<58}{wall:>9.2f}"
                f"  ({cpu:.2f} ms CPU, {stmts} SQL statements + 3 COMMITs)"
            )
            wall, cpu = _raw_sqlite_round(tmp / "store.db")
            print(
                f"{'store: the same SQL via stdlib sqlite3, one thread':<58}{wall:>9.2f}"
                f"  ({cpu:.2f} ms CPU)"
            )
        except Exception as exc:  # the store's API moves; the rest of the table still stands
            print(f"store round skipped: {type(exc).__name__}: {exc}")
    print(f"{'anyio.to_thread.run_sync round trip (no work)':<58}{anyio.run(_thread_hop_ms):>9.3f}")
    with_s, without_s = sniffio_probe_us()
    print(
        f"httpcore current_async_library(): {with_s:.2f} us with sniffio, "
        f"{without_s:.2f} us without (failing import); "
        f"{count_probes_per_request():.0f} calls per pooled request",
        flush=True,
    )


if __name__ == "__main__":
    main()
