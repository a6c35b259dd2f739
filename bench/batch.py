"""Batch mode: collecting a big output file, next to a bare httpx loop doing the same.

    .venv/bin/python bench/batch.py                  # 150 lines of ~2 MB base64 (~300 MB)
    .venv/bin/python bench/batch.py --lines 40       # a quicker look

A FakeProvider in this process plays OpenAI's Batch API and answers every line with the same
~1.5 MB PNG (`FakeBatchAPI.reply_png`), so the output file is `lines` x ~2 MB of base64. The
runner submits (`runner run`, exit 75), then collects in a second `runner run`, measured: wall
time and peak RSS (os.wait4's ru_maxrss of the child). The baseline, also a child process,
downloads the same output file with httpx, streaming it line by line, and decodes and writes
each image: what collecting costs with nothing else (no database, no checks). Targets
(issue 12): the runner's peak RSS under 200 MB; its collection within 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from children import measured  # noqa: E402

from runner.testing import FakeProvider  # noqa: E402

API_KEY = "bench-key"
KEY_ENV = "BENCH_FAKE_KEY"
SIDE = 700  # ~1.47 MB of incompressible PNG: ~1.96 MB of base64

BARE = r"""
import base64, json, sys, pathlib, httpx
url, key, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
count = 0
with httpx.Client(timeout=120) as client:
    with client.stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as reply:
        for line in reply.iter_lines():
            if not line.strip():
                continue
            item = json.loads(line)
            for i, image in enumerate(item["response"]["body"]["data"]):
                data = base64.b64decode(image["b64_json"])
                (out / f"{item['custom_id'][:16]}-{i}.png").write_bytes(data)
                count += 1
print(count)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=150)
    ns = parser.parse_args()
    from PIL import Image

    with (
        tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp,
        FakeProvider(api_key=API_KEY) as fake,
    ):
        root = Path(tmp)
        big = root / "reply.png"
        Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3)).save(big)
        fake.batch.reply_png = big.read_bytes()
        (root / "in").mkdir()
        for i in range(ns.lines):  # small distinct inputs: the replies are what is big
            Image.new("RGB", (32, 32), (i % 256, (i // 256) % 256, 7)).save(
                root / "in" / f"{i}.png"
            )
        manifest = root / "jobs.yaml"
        manifest.write_text(
            "providers:\n  fake:\n    dialect: openai\n"
            f"    base_url: {fake.base_url}\n    api_key_env: {KEY_ENV}\n"
            f"    mode: batch\n    batch: {{max_lines: {ns.lines}}}\n"
            "output_dir: out\njobs:\n  - image: 'in/*.png'\n    prompt: edit it\n"
        )
        env = {**os.environ, KEY_ENV: API_KEY, "RUNNER_DB": ""}
        runner = [sys.executable, "-m", "runner", "run", str(manifest), "--log-format", "plain"]
        submitted = measured(runner, env, root)
        wall, rss = submitted.wall_s, submitted.peak_mb
        assert submitted.code == 75, submitted.stderr
        (batch,) = fake.batch.batches.values()
        fake.batch.get(batch.id)  # the fake runs the lines now, outside the measurement
        output = fake.batch.files[batch.output_file_id or ""]
        size_mb = len(output.data) / 2**20
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        print(
            f"output file: {ns.lines} lines, {size_mb:,.0f} MB; submit run: {wall:.2f} s, "
            f"peak RSS {rss:.0f} MB"
        )

        url = f"{fake.base_url}/files/{batch.output_file_id}/content"
        bare = [sys.executable, "-c", BARE, url, API_KEY, str(root / "bare-out")]
        baseline = measured(bare, env, root)
        assert baseline.code == 0, baseline.stderr
        b_wall, b_rss = baseline.wall_s, baseline.peak_mb
        collected = measured(runner, env, root)
        assert collected.code == 0, collected.stderr
        c_wall, c_rss, c_err = collected.wall_s, collected.peak_mb, collected.stderr
        written = len(list((root / "out").glob("*.png")))
        found = re.search(r"recorded in ([0-9.]+) s", c_err)
        phase = float(found.group(1)) if found else float("nan")
        print(f"{'':24}{'wall s':>8}{'MB/s':>8}{'peak RSS MB':>13}")
        print(f"{'bare httpx loop':24}{b_wall:8.2f}{size_mb / b_wall:8.1f}{b_rss:13.0f}")
        print(f"{'runner run (collect)':24}{c_wall:8.2f}{size_mb / c_wall:8.1f}{c_rss:13.0f}")
        print(f"{'  of which collecting':24}{phase:8.2f}{size_mb / phase:8.1f}")
        print(
            f"runner / bare: {c_wall / b_wall:.2f}x time for the whole command, "
            f"{phase / b_wall:.2f}x for the collection itself (target <= 1.5x; the rest is "
            f"start-up: imports, database, manifest); peak RSS {c_rss:.0f} MB (target < 200 "
            f"MB); {written} outputs written"
        )


if __name__ == "__main__":
    main()
