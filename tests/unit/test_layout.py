"""The layout's rules, checked: the engine imports no I/O library, and no code outside
`runner/dialects/` picks a dialect by its name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import png_bytes

RUNNER = Path(__file__).resolve().parents[2] / "runner"
DIALECT_NAMES = {"openai", "venice"}


@pytest.mark.slow
def test_the_engine_imports_no_http_sql_or_image_library() -> None:
    probe = (
        "import sys, runner.engine.pool, runner.engine.retry, runner.engine.pacing, "
        "runner.engine.budget, runner.engine.pricing, runner.engine.ports\n"
        "print(sorted(m for m in ('httpx', 'sqlalchemy', 'PIL', 'pydantic') "
        "if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"


def _compared_names(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that take part in a comparison: `x == "venice"`, `in ("openai",)`."""
    return [
        (node.lineno, inner.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        for part in [node.left, *node.comparators]
        for inner in ast.walk(part)
        if isinstance(inner, ast.Constant) and inner.value in DIALECT_NAMES
    ]


def test_only_the_dialects_package_tests_a_dialect_name() -> None:
    offenders = []
    for path in sorted(RUNNER.rglob("*.py")):
        relative = path.relative_to(RUNNER)
        if relative.parts[0] in ("dialects", "testing"):  # the fakes play the dialects
            continue
        for line, name in _compared_names(ast.parse(path.read_text())):
            offenders.append(f"{relative}:{line} compares with {name!r}")
    assert offenders == []


def test_the_name_check_would_catch_a_switch() -> None:
    assert _compared_names(ast.parse('if profile.dialect == "venice": pass')) == [(1, "venice")]


@pytest.mark.slow
def test_help_loads_no_http_sql_image_or_schema_library() -> None:
    probe = (
        "import sys\n"
        "from runner.cli import main\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "    main(['run', '--help'], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = ('httpx', 'sqlalchemy', 'PIL', 'pydantic', 'rich', 'anyio')\n"
        "    print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "--concurrency" in done.stdout  # the help was printed
    assert done.stderr.strip().splitlines()[-1] == "[]"


def one_job_manifest(folder: Path, made_by: str) -> Path:
    """A manifest of one job with its database made by `made_by` (`retry`: the job
    pending; `cancel`: set aside), nothing sent."""
    manifest = folder / "jobs.yaml"
    manifest.write_text(
        "providers: {p: {dialect: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
        "output_dir: out\njobs: [{image: a.png, prompt: edit}]\n"
    )
    (folder / "a.png").write_bytes(png_bytes())
    made = subprocess.run([sys.executable, "-m", "runner", made_by, str(manifest)], cwd=folder)
    assert made.returncode == 0 and (folder / "jobs.db").exists()
    return manifest


def loaded_by(args: list[str], modules: tuple[str, ...]) -> tuple[str, str, list[str]]:
    """(stdout, stderr, which of `modules` were imported) of the command `args`, run in a
    fresh interpreter."""
    probe = (
        "import sys\n"
        "from runner.cli import main\n"
        "try:\n"
        f"    main({args!r}, standalone_mode=False)\n"
        "finally:\n"
        f"    print(sorted(m for m in {modules!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    *said, loaded = done.stderr.strip().splitlines()
    return done.stdout, "\n".join(said), ast.literal_eval(loaded)


@pytest.mark.slow
def test_status_loads_no_http_image_or_table_library(tmp_path: Path) -> None:
    # `runner status` answers from the database: the sending half (httpx, the ORM layer of
    # SQLAlchemy's asyncio engine), Pillow and pyarrow cost it half a second at start-up.
    manifest = one_job_manifest(tmp_path, "retry")
    heavy = ("httpx", "PIL.Image", "pyarrow", "sqlalchemy.orm")
    out, err, loaded = loaded_by(["status", str(manifest)], heavy)
    assert "pending" in out, err  # the status was printed
    assert loaded == []


@pytest.mark.slow
def test_a_run_with_nothing_to_send_loads_no_http_image_or_retry_library(tmp_path: Path) -> None:
    # A finished manifest re-run from cron every few minutes: the sending half (HTTP
    # clients, Pillow, tenacity, the pool, batch mode) is loaded only when there is work.
    manifest = one_job_manifest(tmp_path, "cancel")
    heavy = ("httpx", "PIL.Image", "tenacity", "runner.engine.pool", "runner.app.batch_mode",
             "runner.app.sending")  # fmt: skip
    _, err, loaded = loaded_by(["run", str(manifest)], heavy)
    assert "1 cancelled" in err  # the run's summary was printed
    assert loaded == []
