"""The SDK contender for bench/throughput.py: the script a user writes with the `openai` package.

`openai.AsyncOpenAI(base_url, api_key, max_retries=2)` (the SDK's default retries), an
`anyio.Semaphore(C)` around each call, one task per job, `client.images.edit(image=Path(image),
prompt="job <n>", model=...)`, `base64.b64decode(data[0].b64_json)` and a plain write of
`out/<n>.png`. No database, no resume, no input or output checks: what people run before
they need a batch runner. `openai` is a bench-only dependency (`pip install -e '.[bench]'`).

On exit it prints one JSON line to stdout, as bare_loop.py does: {"jobs", "first_start",
"last_end"} with `time.time()` stamps of the first request sent and the last file written.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

import anyio
import openai


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    out = Path(args.out)
    stamps: dict[str, float] = {}
    done = 0
    client = openai.AsyncOpenAI(
        base_url=args.base_url, api_key=args.api_key, max_retries=2, timeout=60.0
    )
    limit = anyio.Semaphore(args.concurrency)
    image = Path(args.image)  # the SDK reads the file for each request

    async def edit(n: int) -> None:
        nonlocal done
        async with limit:
            stamps.setdefault("first_start", time.time())
            reply = await client.images.edit(image=image, prompt=f"job {n}", model=args.model)
            assert reply.data and reply.data[0].b64_json
            png = base64.b64decode(reply.data[0].b64_json)
            (out / f"{n}.png").write_bytes(png)  # blocking, on the loop: as the script would
            done += 1
            stamps["last_end"] = time.time()

    async with client, anyio.create_task_group() as tg:
        for n in range(args.jobs):
            tg.start_soon(edit, n)
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
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(json.dumps(anyio.run(run, args)), flush=True)


if __name__ == "__main__":
    main()
