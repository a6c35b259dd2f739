"""The baseline for bench/throughput.py: the straightforward loop a competent person writes.

`anyio.run`, one `httpx.AsyncClient()` with default limits, C workers in a task group pulling
job numbers from one shared iterator. Each job POSTs the same image with a distinct prompt
(`job <n>`) as multipart to `{base_url}/images/edits`, parses the JSON reply, base64-decodes
`data[0].b64_json` on the event loop and writes `out/<n>.png` with a plain write (no fsync,
no temp file). No database, no retries, no input or output checks.

The only deviation from httpx's defaults is the timeout (60 s instead of 5 s), so that a
loaded 2-core machine cannot turn a slow reply into a failed run; it costs nothing per request.

On exit it prints one JSON line to stdout: {"jobs", "first_start", "last_end"} with
`time.time()` stamps of the first request sent and the last file written, from which the
orchestrator derives the steady-state rate.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

import anyio
import httpx


async def run(args: argparse.Namespace, image: bytes) -> dict[str, float | int]:
    out = Path(args.out)
    url = f"{args.base_url.rstrip('/')}/images/edits"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    jobs = iter(range(args.jobs))  # shared by all workers: each takes the next number
    stamps: dict[str, float] = {}
    done = 0

    async with httpx.AsyncClient(timeout=60.0) as client:

        async def worker() -> None:
            nonlocal done
            for n in jobs:
                stamps.setdefault("first_start", time.time())
                response = await client.post(
                    url,
                    data={"prompt": f"job {n}", "model": args.model},
                    files={"image": (Path(args.image).name, image, "image/png")},
                    headers=headers,
                )
                response.raise_for_status()
                body = response.json()
                png = base64.b64decode(body["data"][0]["b64_json"])
                (out / f"{n}.png").write_bytes(png)  # blocking, on the loop: deliberately plain
                done += 1
                stamps["last_end"] = time.time()

        async with anyio.create_task_group() as tg:
            for _ in range(args.concurrency):
                tg.start_soon(worker)

    return {"jobs": done, **stamps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="gpt-image-1")
    args = parser.parse_args()
    image = Path(args.image).read_bytes()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(json.dumps(anyio.run(run, args, image)), flush=True)


if __name__ == "__main__":
    main()
