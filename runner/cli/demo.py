"""`runner demo`: the example manifest, run offline against the built-in fake provider.

It copies the example images into a folder, writes a manifest that points at a fake
provider on 127.0.0.1 (which answers one request with a 429 and one with a 500, so the
retries show), runs it like `runner run` would, and says where to look.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import yaml
from rich.console import Console

from runner import app
from runner.testing import FakeProvider

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # runner/examples
DEMO_KEY_ENV = "RUNNER_DEMO_KEY"
DEMO_KEY = "demo-key-not-secret"


def demo_manifest(base_url: str, batch: bool = False) -> dict[str, object]:
    profile: dict[str, object] = {
        "dialect": "openai",
        "base_url": base_url,
        "api_key_env": DEMO_KEY_ENV,
        "concurrency": 2,
    }
    if batch:
        profile["mode"] = "batch"
    return {
        "providers": {"fake": profile},
        "defaults": {"model": "gpt-image-2", "params": {"quality": "medium"}},
        "output_dir": "out",
        "jobs": [
            {
                "image": "photos/boat.png",
                "mask": "masks/boat-ribbon.png",
                "prompt": "Add a small red ribbon to the top of the mast.",
                "params": {"n": 2},
            },
            {
                "image": "photos/*.png",
                "mask": "masks/{stem}-sky.png",
                "prompt": "Turn the sky into a warm sunrise.",
            },
        ],
    }


def run_demo(directory: Path, console: Console, batch: bool = False) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for folder in ("photos", "masks"):
        shutil.copytree(EXAMPLES / folder, directory / folder, dirs_exist_ok=True)
    os.environ[DEMO_KEY_ENV] = DEMO_KEY  # this process only; the fake checks it
    with FakeProvider(
        api_key=DEMO_KEY, latency=0.3, script=["rate_limit", None, "server_error"], retry_after=1
    ) as fake:
        manifest = directory / "jobs.yaml"
        manifest.write_text(
            "# Written by `runner demo`; the fake provider's port changes every time.\n"
            + yaml.safe_dump(demo_manifest(fake.base_url, batch), sort_keys=False)
        )
        console.print(f"demo: running {manifest} against a fake provider at {fake.base_url}")
        outcome = anyio.run(app.run, manifest, app.Options())
        if batch:
            console.print(
                f"demo: exit {outcome.exit_code}: the jobs went to the fake's Batch API in "
                f"{fake.batch.batches_created} batch, at half the live price; a real batch "
                "takes minutes to hours, this one is done at once. `runner run` again "
                "collects it:"
            )
            outcome = anyio.run(app.run, manifest, app.Options())
        errors = {code: n for code, n in sorted(fake.status_counts.items()) if code != 200}
        retried = ", ".join(f"{n} x HTTP {code}" for code, n in errors.items()) or "none"
        console.print(
            f"demo: the fake provider saw {fake.requests_total} requests: "
            f"{sum(fake.paid.values())} paid edits; errors answered and retried: {retried}"
        )
    for row in sorted((directory / "out").glob("*.png")):
        console.print(f"  wrote {row}")
    report = directory / "report.html"
    anyio.run(app.report, manifest, app.Options(), report)
    console.print(f"  wrote {report} (open it in a browser: before/after, costs)")
    console.print(
        f"demo: exit code {outcome.exit_code}. Try:\n"
        f"  runner status {manifest}\n"
        f"  runner jobs {manifest}\n"
        f"  runner export {manifest} --format csv\n"
        f"  runner run {manifest}    # again: nothing left to send, 0 requests"
    )
    return outcome.exit_code
