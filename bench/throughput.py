"""Throughput, CPU and memory of `runner run` against the fake provider, next to a bare loop.

    .venv/bin/python bench/throughput.py --scenario speed          # L=0, C=16, N=500
    .venv/bin/python bench/throughput.py --scenario bound          # L=1, C=32, N=640
    .venv/bin/python bench/throughput.py --scenario memory         # L=0, C=16, N=2000
    .venv/bin/python bench/throughput.py --scenario all --repeat 1

One fake server (`python -m runner.testing`) per scenario; every contender is a separate child
process, measured with os.wait4 (user+sys CPU, ru_maxrss) and sampled for VmRSS every 0.5 s.
The runner's steady-state rate comes from its own database (first attempt started → last
attempt finished), so interpreter start-up, imports, hashing and migrations are reported
apart. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import selectors
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from children import compile_runner  # noqa: E402

RESULTS = BENCH / "results" / "latest.json"
API_KEY = "bench-key"
KEY_ENV = "BENCH_FAKE_KEY"
MODEL = "gpt-image-2"
RSS_SAMPLE_S = 0.5
POLL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS: dict[str, dict[str, Any]] = {
    "bound": {"latency": 1.0, "concurrency": 32, "jobs": 640},
    "speed": {"latency": 0.0, "concurrency": 16, "jobs": 500},
    "memory": {"latency": 0.0, "concurrency": 16, "jobs": 2000},
    # Many requests in flight, each waiting long: what memory grows with concurrency.
    "wide": {"latency": 20.0, "concurrency": 128, "jobs": 512},
}
BOUND_SHARE = 0.95  # bound: runner >= 0.95 x C/L
SPEED_RATIO = 1.0  # speed: runner >= 1.0 x bare
CPU_RATIO = 1.2  # speed: runner CPU per job <= 1.2 x bare
RSS_LIMIT_MB = 400.0  # memory: runner peak RSS < 400 MB
RSS_SDK_RATIO = 1.5  # memory, wide: runner peak RSS <= 1.5 x the SDK script's
CONTENDER_KINDS = ("runner", "bare", "sdk")


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    contender: str
    repeat: int
    jobs: int  # output files found
    exit_code: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_rss_mb: float  # ru_maxrss of the child
    server_cpu_s: float  # fake server's CPU during this child's life
    startup_s: float | None = None  # launch -> first request sent
    tail_s: float | None = None  # last job finished -> process gone
    steady_jobs_s: float | None = None
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (s since launch, VmRSS)

    @property
    def jobs_s(self) -> float:
        return self.jobs / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_job(self) -> float:
        return 1000 * self.cpu_s / self.jobs if self.jobs else float("nan")

    @property
    def server_cpu_ms_job(self) -> float:
        return 1000 * self.server_cpu_s / self.jobs if self.jobs else float("nan")


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc (0.0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def _vm_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class ChildResult:
    exit_code: int
    launched: float  # time.time() at launch
    ended: float
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    server_cpu_s: float
    rss_mb: list[tuple[float, float]]


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str],
    stdout: Path,
    stderr: Path,
    timeout_s: float,
    server_pid: int,
) -> ChildResult:
    """Run `cmd` to completion, reaping it with wait4 to get its own rusage."""
    server_cpu0 = _proc_cpu_s(server_pid)
    samples: list[tuple[float, float]] = []
    with stdout.open("wb") as out, stderr.open("wb") as err:
        launched = time.time()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        try:
            next_sample = 0.0
            killed = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                elapsed = time.monotonic() - start
                if elapsed >= next_sample:
                    rss = _vm_rss_mb(proc.pid)
                    if rss is not None:
                        samples.append((round(elapsed, 2), round(rss, 1)))
                    next_sample += RSS_SAMPLE_S
                if elapsed > timeout_s and not killed:
                    print(f"  ! {cmd[1:4]} exceeded {timeout_s:.0f} s: killed", file=sys.stderr)
                    proc.kill()
                    killed = True
                time.sleep(POLL_S)
        except BaseException:
            with contextlib.suppress(OSError):
                proc.kill()
                os.wait4(proc.pid, 0)
            raise
        wall = time.monotonic() - start
        ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping again
    return ChildResult(
        exit_code=proc.returncode,
        launched=launched,
        ended=ended,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,  # KB on Linux
        server_cpu_s=_proc_cpu_s(server_pid) - server_cpu0,
        rss_mb=samples,
    )


# --------------------------------------------------------------------------- the server


class FakeServer:
    def __init__(self, latency: float, log: Path) -> None:
        self.latency = latency
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner.testing",
                "--port",
                "0",
                "--latency",
                str(latency),
                "--api-key",
                API_KEY,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.base_url = self._read_base_url(timeout_s=30.0)

    def _read_base_url(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise RuntimeError(f"fake server printed no base_url within {timeout_s:.0f} s")
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fake server printed {line!r}, not a 127.0.0.1 base_url")
        return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


# --------------------------------------------------------------------------- contenders


def make_image(path: Path, side: int) -> int:
    """A side x side RGB noise PNG (incompressible, so ~3 bytes a pixel)."""
    from PIL import Image  # the runner's own dependency

    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path)
    return path.stat().st_size


def write_manifest(run_dir: Path, base_url: str, image: Path, jobs: int, conc: int) -> Path:
    lines = [
        "providers:",
        "  fake:",
        "    dialect: openai",
        f"    base_url: {base_url}",
        f"    api_key_env: {KEY_ENV}",
        f"    concurrency: {conc}",
        "defaults:",
        "  provider: fake",
        f"  model: {MODEL}",
        "output_dir: out",
        "jobs:",
    ]
    lines += [f'  - {{image: "{image}", prompt: "job {n}"}}' for n in range(jobs)]
    manifest = run_dir / "jobs.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _utc_ts(stored: int) -> float:
    return stored / 1e6  # the runner keeps SQLite times as microseconds since 1970 (UTC)


def runner_db_times(db: Path) -> tuple[int, float, float] | None:
    """(succeeded jobs, first attempt start, last attempt finish) as epoch seconds."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (done,) = con.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()
        first, last = con.execute(
            "SELECT min(started_at), max(finished_at) FROM attempts"
        ).fetchone()
    finally:
        con.close()
    if not first or not last:
        return None
    return int(done), _utc_ts(first), _utc_ts(last)


def _count_outputs(out: Path) -> int:
    if not out.is_dir():
        return 0
    return sum(1 for p in out.iterdir() if p.suffix == ".png" and not p.name.startswith("."))


@dataclass
class Contender:
    name: str
    kind: str  # "runner", "bare" (bench/bare_loop.py) or "sdk" (bench/sdk_loop.py)
    env: dict[str, str] = field(default_factory=dict)  # extra environment
    python: str = sys.executable  # the bare loop may run under another interpreter


def run_contender(
    c: Contender,
    repeat: int,
    *,
    work: Path,
    server: FakeServer,
    image: Path,
    jobs: int,
    conc: int,
    timeout_s: float,
    keep: bool,
) -> Run:
    tag = c.name.replace("[", "_").replace("]", "").replace("=", "-").replace(",", "_")
    run_dir = work / f"{tag}-r{repeat}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir / "out"
    env = {**os.environ, **c.env}
    if c.kind == "runner":
        manifest = write_manifest(run_dir, server.base_url, image, jobs, conc)
        env[KEY_ENV] = API_KEY
        env.pop("RUNNER_DB", None)  # fresh <stem>.db beside the manifest
        # -P: the working directory (the repository) is not put first on sys.path, so a
        # contender's PYTHONPATH (`--runner-env PYTHONPATH=<other checkout>`) decides which
        # runner runs; without one, the installed (editable) package is this checkout.
        cmd = [sys.executable, "-P", "-m", "runner", "run", str(manifest)]
    else:
        cmd = [
            c.python,
            str(BENCH / f"{c.kind}_loop.py"),
            "--base-url",
            server.base_url,
            "--api-key",
            API_KEY,
            "--image",
            str(image),
            "--jobs",
            str(jobs),
            "--concurrency",
            str(conc),
            "--out",
            str(out),
            "--model",
            MODEL,
        ]
    res = run_child(
        cmd,
        env=env,
        stdout=run_dir / "stdout.txt",
        stderr=run_dir / "stderr.txt",
        timeout_s=timeout_s,
        server_pid=server.proc.pid,
    )
    found = _count_outputs(out)
    run = Run(
        contender=c.name,
        repeat=repeat,
        jobs=found,
        exit_code=res.exit_code,
        wall_s=res.wall_s,
        cpu_s=res.user_s + res.sys_s,
        user_s=res.user_s,
        sys_s=res.sys_s,
        peak_rss_mb=res.maxrss_mb,
        server_cpu_s=res.server_cpu_s,
        rss_mb=res.rss_mb,
    )
    if c.kind == "runner":
        times = runner_db_times(run_dir / "jobs.db")
        if times:
            done, first, last = times
            run.startup_s, run.tail_s = first - res.launched, res.ended - last
            run.steady_jobs_s = done / (last - first) if last > first else None
    else:
        with contextlib.suppress(ValueError, IndexError, KeyError):
            stamps = json.loads((run_dir / "stdout.txt").read_text().splitlines()[-1])
            first, last = stamps["first_start"], stamps["last_end"]
            run.startup_s, run.tail_s = first - res.launched, res.ended - last
            run.steady_jobs_s = stamps["jobs"] / (last - first) if last > first else None
    problems = []
    if res.exit_code != 0:
        problems.append(f"exit code {res.exit_code}")
    if found != jobs:
        problems.append(f"{found} of {jobs} output files")
    if problems:
        tail = (run_dir / "stderr.txt").read_text(errors="replace")[-1500:]
        print(f"  ! {c.name}: {', '.join(problems)}\n{tail}", file=sys.stderr)
    # 2,000 outputs are ~3 GB: never keep them once counted.
    shutil.rmtree(out, ignore_errors=True)
    if not keep:
        for p in run_dir.glob("jobs.db*"):
            p.unlink()
    return run


# --------------------------------------------------------------------------- reporting


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[Run]) -> dict[str, Any]:
    return {
        "runs": len(runs),
        "jobs": min(r.jobs for r in runs),
        "ok": all(r.exit_code == 0 for r in runs),
        "wall_s": _median([r.wall_s for r in runs]),
        "jobs_s": _median([r.jobs_s for r in runs]),
        "steady_jobs_s": _median([r.steady_jobs_s for r in runs]),
        "startup_s": _median([r.startup_s for r in runs]),
        "tail_s": _median([r.tail_s for r in runs]),
        "cpu_ms_job": _median([r.cpu_ms_job for r in runs]),
        "user_ms_job": _median([1000 * r.user_s / max(r.jobs, 1) for r in runs]),
        "sys_ms_job": _median([1000 * r.sys_s / max(r.jobs, 1) for r in runs]),
        "peak_rss_mb": _median([r.peak_rss_mb for r in runs]),
        "server_cpu_ms_job": _median([r.server_cpu_ms_job for r in runs]),
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def evaluate(name: str, cfg: dict[str, Any], summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios and the scenario's target, judged on the plain `runner` contender."""
    latency, conc = cfg["latency"], cfg["concurrency"]
    bound = conc / latency if latency > 0 else None
    r, b, sdk = summary.get("runner"), summary.get("bare"), summary.get("sdk")
    ev: dict[str, Any] = {"bound_jobs_s": bound, "targets": []}
    if r and bound:
        ev["runner_over_bound"] = r["jobs_s"] / bound
        ev["runner_steady_over_bound"] = (r["steady_jobs_s"] or 0) / bound
    if r and sdk:
        ev["runner_rss_over_sdk"] = r["peak_rss_mb"] / sdk["peak_rss_mb"]
        ev["runner_over_sdk"] = r["jobs_s"] / sdk["jobs_s"]
    if r and b:
        ev["runner_cpu_over_bare"] = r["cpu_ms_job"] / b["cpu_ms_job"]
        ev["runner_over_bare"] = r["jobs_s"] / b["jobs_s"]
        if r["steady_jobs_s"] and b["steady_jobs_s"]:
            ev["runner_over_bare_steady"] = r["steady_jobs_s"] / b["steady_jobs_s"]
    ok_runs = bool(r and r["ok"] and r["jobs"] == cfg["jobs"])
    if name == "bound" and r and bound:
        for label, key in (
            ("end-to-end", "runner_over_bound"),
            ("steady", "runner_steady_over_bound"),
        ):
            value = ev[key]
            ev["targets"].append(
                {
                    "target": f"runner {label} jobs/s >= {BOUND_SHARE} x C/L",
                    "value": value,
                    "pass": ok_runs and value >= BOUND_SHARE,
                }
            )
    if name == "speed" and "runner_over_bare" in ev:
        for label, key in (
            ("end-to-end", "runner_over_bare"),
            ("steady", "runner_over_bare_steady"),
        ):
            if key in ev:
                value = ev[key]
                ev["targets"].append(
                    {
                        "target": f"runner {label} jobs/s >= {SPEED_RATIO} x bare",
                        "value": value,
                        "pass": ok_runs and value >= SPEED_RATIO,
                    }
                )
        ev["targets"].append(
            {
                "target": f"runner CPU per job <= {CPU_RATIO} x bare",
                "value": ev["runner_cpu_over_bare"],
                "pass": ok_runs and ev["runner_cpu_over_bare"] <= CPU_RATIO,
            }
        )
    if name in ("memory", "wide") and "runner_rss_over_sdk" in ev:
        ev["targets"].append(
            {
                "target": f"runner peak RSS <= {RSS_SDK_RATIO} x the SDK script's",
                "value": ev["runner_rss_over_sdk"],
                "pass": ok_runs and ev["runner_rss_over_sdk"] <= RSS_SDK_RATIO,
            }
        )
    if name == "memory" and r:
        ev["targets"].append(
            {
                "target": f"runner peak RSS < {RSS_LIMIT_MB:.0f} MB over {cfg['jobs']} jobs",
                "value": r["peak_rss_mb"],
                "pass": ok_runs and r["peak_rss_mb"] < RSS_LIMIT_MB,
            }
        )
    return ev


def print_table(
    name: str,
    cfg: dict[str, Any],
    summary: dict[str, dict[str, Any]],
    runs: dict[str, list[Run]],
    ev: dict[str, Any],
    image_mb: float,
    repeat: int,
) -> None:
    latency, conc, jobs = cfg["latency"], cfg["concurrency"], cfg["jobs"]
    bound = ev["bound_jobs_s"]
    print(
        f"\n== {name}: L={latency:g} s, C={conc}, N={jobs}, image {image_mb:.2f} MB, "
        f"{'median of ' + str(repeat) if repeat > 1 else '1 run'}; "
        f"bound C/L = {_fmt(bound) if bound else 'n/a'} jobs/s"
    )
    w = max(12, *(len(c) + 2 for c in summary))
    head = (
        f"{'contender':<{w}}{'jobs':>6}{'wall s':>8}{'jobs/s':>8}{'steady/s':>9}"
        f"{'start s':>8}{'tail s':>7}{'CPU ms/job':>11}{'(usr/sys)':>12}"
        f"{'peak RSS MB':>12}{'srv CPU ms/job':>15}"
    )
    print(head)
    print("-" * len(head))
    for contender, s in summary.items():
        usr_sys = f"{s['user_ms_job']:.1f}/{s['sys_ms_job']:.1f}"
        print(
            f"{contender:<{w}}{s['jobs']:>6}{_fmt(s['wall_s'], '.2f'):>8}"
            f"{_fmt(s['jobs_s']):>8}{_fmt(s['steady_jobs_s']):>9}"
            f"{_fmt(s['startup_s'], '.2f'):>8}{_fmt(s['tail_s'], '.2f'):>7}"
            f"{_fmt(s['cpu_ms_job']):>11}{usr_sys:>12}{_fmt(s['peak_rss_mb']):>12}"
            f"{_fmt(s['server_cpu_ms_job']):>15}"
        )
    ratios = []
    if "runner_over_bound" in ev:
        ratios.append(
            f"runner/bound {ev['runner_over_bound']:.3f} end-to-end, "
            f"{ev['runner_steady_over_bound']:.3f} steady"
        )
    if "runner_over_bare" in ev:
        steady = ev.get("runner_over_bare_steady")
        ratios.append(
            f"runner/bare {ev['runner_over_bare']:.3f} end-to-end"
            + (f", {steady:.3f} steady" if steady else "")
            + f"; CPU per job {ev['runner_cpu_over_bare']:.3f}"
        )
    if "runner_over_sdk" in ev:
        ratios.append(
            f"runner/sdk {ev['runner_over_sdk']:.3f} end-to-end; "
            f"peak RSS {ev['runner_rss_over_sdk']:.3f}"
        )
    if "bare" in summary:
        ratios += [
            f"{name}/bare {s['jobs_s'] / summary['bare']['jobs_s']:.3f}"
            for name, s in summary.items()
            if name.startswith("runner[")
        ]
    for line in ratios:
        print("  " + line)
    for t in ev["targets"]:
        print(f"  {_verdict(t['pass'])}  {t['target']}  (got {t['value']:.3f})")
    if name in ("memory", "wide") or jobs >= 1500:
        print("  VmRSS MB over the run (10 evenly spaced samples):")
        for contender, rs in runs.items():
            series = rs[0].rss_mb
            if series:
                step = max(1, len(series) // 10)
                picked = [*series[::step][:10], series[-1]]
                print(f"    {contender:<{w}}" + " ".join(f"{v:.0f}" for _, v in picked))


# --------------------------------------------------------------------------- main


def parse_env_variant(text: str) -> dict[str, str]:
    env = {}
    for item in filter(None, text.split(",")):
        name, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        env[name.strip()] = value
    return env


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "runner"],
            cwd=REPO,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty runner/" if dirty else "")


def warm_up(work: Path, server: FakeServer, image: Path, contenders: list[Contender]) -> None:
    """Compile .pyc files and fill the server's edit cache before anything is timed."""
    for c in {c.kind: c for c in contenders}.values():
        run_contender(
            c,
            0,
            work=work / "warmup",
            server=server,
            image=image,
            jobs=2,
            conc=2,
            timeout_s=120,
            keep=False,
        )


def run_scenario(
    name: str,
    cfg: dict[str, Any],
    contenders: list[Contender],
    *,
    work: Path,
    image: Path,
    image_mb: float,
    repeat: int,
    timeout_s: float,
    keep: bool,
    warm: bool,
) -> dict[str, Any]:
    server = FakeServer(cfg["latency"], work / f"server-{name}.log")
    runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
    try:
        print(
            f"\n[{name}] fake server at {server.base_url} (latency {cfg['latency']:g} s)",
            flush=True,
        )
        if warm:
            warm_up(work, server, image, contenders)
        for i in range(repeat):
            order = contenders if i % 2 == 0 else contenders[::-1]  # alternate
            for c in order:
                run = run_contender(
                    c,
                    i,
                    work=work / name,
                    server=server,
                    image=image,
                    jobs=cfg["jobs"],
                    conc=cfg["concurrency"],
                    timeout_s=timeout_s,
                    keep=keep,
                )
                runs[c.name].append(run)
                print(
                    f"  {c.name:<32} #{i}: {run.jobs} jobs in {run.wall_s:.2f} s "
                    f"({run.jobs_s:.1f}/s), CPU {run.cpu_ms_job:.1f} ms/job, "
                    f"peak RSS {run.peak_rss_mb:.0f} MB",
                    flush=True,
                )
    finally:
        server.stop()
    summary = {c.name: summarize(runs[c.name]) for c in contenders}
    ev = evaluate(name, cfg, summary)
    print_table(name, cfg, summary, runs, ev, image_mb, repeat)
    return {
        "config": cfg,
        "summary": summary,
        "evaluation": ev,
        "runs": {
            k: [asdict(r) | {"jobs_s": r.jobs_s, "cpu_ms_job": r.cpu_ms_job} for r in v]
            for k, v in runs.items()
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description="runner vs a bare httpx+anyio loop and an SDK script.")
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="speed")
    p.add_argument("--jobs", type=int, help="override N")
    p.add_argument("--latency", type=float, help="override L (seconds)")
    p.add_argument("--concurrency", type=int, help="override C")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender; medians reported")
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDER_KINDS),
        help="comma list of runner,bare,sdk (sdk needs `pip install -e '.[bench]'`)",
    )
    p.add_argument(
        "--runner-env",
        action="append",
        type=parse_env_variant,
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="add a runner contender with this extra environment "
        "(e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    p.add_argument(
        "--bare-env",
        action="append",
        type=parse_env_variant,
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="the same for the bare loop",
    )
    p.add_argument(
        "--bare-python",
        action="append",
        default=[],
        metavar="PATH",
        help="add a bare-loop contender run by this interpreter (e.g. a venv "
        "without sniffio); repeatable",
    )
    p.add_argument("--image-side", type=int, default=700, help="noise PNG side in pixels")
    p.add_argument("--timeout", type=float, default=170.0, help="kill a child after this (s)")
    p.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="work in DIR and keep manifests, databases and logs (not outputs)",
    )
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()

    if not 1 <= args.repeat <= 10:
        p.error("--repeat must be 1..10")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    contenders = [Contender(n, n) for n in args.contenders.split(",") if n]
    if any(c.kind not in CONTENDER_KINDS for c in contenders):
        p.error("--contenders takes runner, bare and/or sdk")
    if any(c.kind == "sdk" for c in contenders) and importlib.util.find_spec("openai") is None:
        p.error("the sdk contender needs the openai package: pip install -e '.[bench]'")
    for kind, variants in (("runner", args.runner_env), ("bare", args.bare_env)):
        for env in variants:
            label = ",".join(f"{k}={v}" for k, v in env.items())
            contenders.append(Contender(f"{kind}[{label}]", kind, env))
    contenders += [Contender(f"bare[python={py}]", "bare", python=py) for py in args.bare_python]

    compile_runner(REPO)
    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "argv": sys.argv[1:],
        "commit": _git_commit(),
        "scenarios": {},
    }
    try:
        image = work / "input.png"
        size = make_image(image, args.image_side)
        report["image_bytes"] = size
        print(
            f"runner at {report['commit']}; {os.cpu_count()} CPUs; "
            f"Python {report['machine']['python']}"
        )
        print(
            f"input: {image} {args.image_side}x{args.image_side} RGB noise PNG, "
            f"{size:,} bytes ({size / 1e6:.2f} MB); work dir {work}"
        )
        for i, name in enumerate(names):
            cfg = dict(SCENARIOS[name])
            for key in ("jobs", "latency", "concurrency"):
                if getattr(args, key) is not None:
                    cfg[key] = getattr(args, key)
            report["scenarios"][name] = run_scenario(
                name,
                cfg,
                contenders,
                work=work,
                image=image,
                image_mb=size / 1e6,
                repeat=args.repeat,
                timeout_s=args.timeout,
                keep=bool(args.keep),
                warm=i == 0,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if report["scenarios"]:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(report, indent=1) + "\n")
            print(f"\nresults written to {args.results}")
    failed = [
        t for s in report["scenarios"].values() for t in s["evaluation"]["targets"] if not t["pass"]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
