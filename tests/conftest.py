"""Shared fixtures: a fake provider over real HTTP, a workspace of generated images and
manifests, and a clock whose sleeps are recorded instead of waited."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from helpers import FakeClock
from PIL import Image, ImageDraw
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from runner import app
from runner.settings import RetrySettings, RunSettings
from runner.store import engine as store_engine
from runner.store.engine import open_store
from runner.testing import FakeProvider

PG_ADMIN_URL = os.environ.get("RUNNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
API_KEY = "sk-test-SECRET-7f3a9c2e51"
# A job's attempts that used up its budget, as SQL over the `jobs` table.
COUNTED_ATTEMPTS = "(SELECT COUNT(*) FROM attempts a WHERE a.job_key = jobs.key AND a.counted)"
KEY_ENV = "RUNNER_TEST_KEY"


class Workspace:
    """A folder with images, masks and manifests that point at the fake provider."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        self._seed = 0

    def image(self, name: str, size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> str:
        """A distinct picture (so each gets its own job key); returns its relative path."""
        self._seed += 1
        rnd = random.Random(self._seed)
        picture = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), 90))
        draw = ImageDraw.Draw(picture)
        for _ in range(6):
            x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
            draw.rectangle([x, y, x + 8, y + 6], fill=(rnd.randrange(256), 40, 200))
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, fmt)
        return name

    def mask(
        self,
        name: str,
        size: tuple[int, int] = (64, 48),
        hole: tuple[int, int, int, int] = (10, 10, 30, 30),
        mode: str = "RGBA",
    ) -> str:
        """Opaque except for a transparent `hole` (the area to edit)."""
        mask = Image.new("RGBA", size, (0, 0, 0, 255))
        ImageDraw.Draw(mask).rectangle(hole, fill=(0, 0, 0, 0))
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (mask if mode == "RGBA" else mask.convert(mode)).save(path, "PNG")
        return name

    def manifest(self, jobs: list[dict[str, Any]], name: str = "jobs.yaml", **extra: Any) -> Path:
        profile = {
            "dialect": "openai",
            "base_url": self.base_url,
            "api_key_env": KEY_ENV,
            "concurrency": 2,
        }
        profile.update(extra.pop("profile", {}))
        document = {"providers": {"fake": profile}, "output_dir": "out", "jobs": jobs, **extra}
        path = self.root / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def db(self, name: str = "jobs.db") -> sqlite3.Connection:
        connection = sqlite3.connect(self.root / name)
        connection.row_factory = sqlite3.Row
        return connection

    def fingerprint(self, job: dict[str, Any], model: str = "gpt-image-2") -> str:
        image = (self.root / job["image"]).read_bytes()
        mask = (self.root / job["mask"]).read_bytes() if job.get("mask") else None
        return FakeProvider.fingerprint(image, mask, job["prompt"], model)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def options(clock: FakeClock | None = None, max_attempts: int = 5, **settings: Any) -> app.Options:
    return app.Options(
        settings=RunSettings(retry=RetrySettings(max_attempts=max_attempts), **settings),
        clock=clock or FakeClock(),
    )


@pytest.fixture(scope="session")
def migrated_schema(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The SQL of a database the real Alembic migrations brought to head, made once."""
    path = tmp_path_factory.mktemp("schema") / "template.db"

    async def build() -> None:
        store = await open_store(f"sqlite+aiosqlite:///{path}")
        await store.close()

    anyio.run(build)
    with sqlite3.connect(path) as template:
        statements = [
            sql
            for (sql,) in template.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            )
        ]
        version = template.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    return [*statements, f"INSERT INTO alembic_version VALUES ('{version}')"]


@pytest.fixture(autouse=True)
def fast_new_databases(migrated_schema: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A new, empty SQLite database gets the migrated schema replayed (a few ms) instead of
    running every migration (about 0.1 s each time). A database that has tables still goes
    through the real migrations, and tests/integration/test_store.py tests those."""
    real_upgrade = store_engine.upgrade_to_head

    def upgrade(connection: Connection) -> None:
        empty = not inspect(connection).get_table_names()
        if connection.dialect.name != "sqlite" or not empty:
            real_upgrade(connection)
            return
        for statement in migrated_schema:
            connection.exec_driver_sql(statement)

    monkeypatch.setattr(store_engine, "upgrade_to_head", upgrade)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(api_key=API_KEY) as provider:
        yield provider


@pytest.fixture
def workspace(tmp_path: Path, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.delenv("RUNNER_DB", raising=False)
    return Workspace(tmp_path, fake.base_url)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database; skips where no server answers."""
    psycopg = pytest.importorskip("asyncpg")
    import asyncio

    name = f"runner_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql://", "postgres://")

    async def admin_sql(sql: str) -> None:
        connection = await psycopg.connect(admin, timeout=3)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    try:
        asyncio.run(admin_sql(f"CREATE DATABASE {name}"))
    except (OSError, psycopg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin_sql(f"DROP DATABASE {name} WITH (FORCE)"))


@dataclass(frozen=True)
class S3Bucket:
    """An empty bucket on the local S3 server; the environment points obstore at it."""

    name: str
    endpoint: str
    secret: str  # the AWS_SECRET_ACCESS_KEY the tests set: must never show anywhere

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def _store(self) -> Any:
        from obstore.store import from_url

        return from_url(self.url)

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self._store(), key).bytes())

    def put(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self._store(), key, data)

    def object_keys(self) -> list[str]:
        import obstore

        return sorted(str(meta["path"]) for batch in obstore.list(self._store()) for meta in batch)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 in a thread of this process (other processes reach it
    too); skips where moto or obstore is not installed."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    secret = f"s3secret-{uuid.uuid4().hex}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "runner-tests",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"runner-{uuid.uuid4().hex[:10]}"
    httpx.put(f"{s3_server}/{bucket}", timeout=10).raise_for_status()
    return S3Bucket(bucket, s3_server, secret)
