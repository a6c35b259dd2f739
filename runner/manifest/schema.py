"""The manifest's YAML, validated: pydantic models of the document, read with bounded YAML
(`yaml_load.py`), and the provider profiles and prices they describe. Turning jobs into
specs (defaults, globs, keys) is `expand.py`.

Every problem becomes one ManifestError line naming the file, the job and the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.dialects import DIALECTS, dialect_named
from runner.errors import ManifestError, shown
from runner.manifest import yaml_load
from runner.records import ProviderProfile
from runner.settings import (
    DEFAULT_BATCH_LINES,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_REPLY_MB,
    DEFAULT_READ_TIMEOUT_S,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchSettings(_Strict):
    """`mode: batch` (OpenAI's Batch API): how the lines are split, how long they may take."""

    max_lines: int = Field(DEFAULT_BATCH_LINES, ge=1, le=50_000)
    completion_window: Literal["24h"] = "24h"


class Profile(_Strict):
    dialect: str
    base_url: str
    api_key_env: str | None = None
    auth: Literal["api_key", "x402"] = "api_key"
    wallet_key_env: str | None = None
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=256)
    requests_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(DEFAULT_READ_TIMEOUT_S, gt=0)
    breaker_failures: int | None = Field(None, ge=1)
    max_reply_mb: float = Field(DEFAULT_MAX_REPLY_MB, gt=0)
    mode: Literal["live", "batch"] = "live"
    batch: BatchSettings | None = None


class _Limits(_Strict):
    deadline: str | None = None
    max_jobs: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)


class Price(_Strict):
    """Per million tokens (openai dialect) or per edit (venice)."""

    text_input: float | None = Field(None, ge=0)
    image_input: float | None = Field(None, ge=0)
    image_output: float | None = Field(None, ge=0)
    per_edit: float | None = Field(None, ge=0)
    extra_image: float | None = Field(None, ge=0)


class MaskFields(_Strict):
    path: str
    optional: bool = False


class JobFields(_Strict):
    image: str | None = None
    prompt: str | None = None
    mask: str | MaskFields | None = None
    mask_optional: bool | None = None  # a missing mask file means an unmasked edit
    provider: str | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    output_name: str | None = None


class TableSource(_Strict):
    """`jobs_from:` one table as a job list: which columns hold what (see tables.py)."""

    table: str  # .csv, .tsv, .jsonl or .parquet, relative to the manifest
    image: str  # column: a path (relative to the table) or the image's bytes
    prompt: str | None = None  # column; without it, `defaults.prompt` for every row
    mask: str | None = None  # column, like image
    id: str | None = None  # column: a stable row id, named in errors (and kept in exports)
    params: dict[str, str] | None = None  # param name -> column holding its value per row


class Document(_Strict):
    providers: dict[str, Profile] = Field(min_length=1)
    defaults: JobFields = JobFields()
    output_dir: str = "out"
    database: str | None = None
    limits: _Limits = _Limits()
    pricing: dict[str, dict[str, Price]] = Field(default_factory=dict)
    jobs: list[JobFields] = Field(default_factory=list)
    jobs_from: list[TableSource] = Field(default_factory=list)


def read_document(path: Path, *, jobs: bool = True) -> Document:
    """The manifest, validated; `jobs=False`: its `jobs:` entries are read as YAML but not
    built or validated (they come back empty), for its settings alone."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest: {exc}", file=name) from exc
    try:
        raw = yaml_load.load(text, unbuilt=None if jobs else "jobs")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "" if isinstance(exc, yaml_load.YamlRefused) else "invalid YAML: "
        raise ManifestError(f"{where}{kind}{problem}", file=name) from exc
    if not isinstance(raw, dict):
        raise ManifestError("the manifest must be a mapping with providers: and jobs:", file=name)
    try:
        document = Document.model_validate(raw)
    except ValidationError as exc:
        raise _translate(exc, name) from None
    if jobs and not document.jobs and not document.jobs_from:
        raise ManifestError("required (or jobs_from: tables of jobs)", file=name, field="jobs")
    return document


def _translate(exc: ValidationError, file: str) -> ManifestError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    job = int(loc[1]) if len(loc) > 1 and loc[0] == "jobs" and loc[1].isdigit() else None
    field = ".".join(loc[2:] if job is not None else loc)
    message = _one_problem(error, file).reason
    more = exc.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ManifestError(
        message,
        file=file,
        job=job,
        field=field,
        problems=[_one_problem(error, file) for error in exc.errors()[:MAX_LISTED_PROBLEMS]],
    )


# `runner validate` lists a manifest's problems, up to this many.
MAX_LISTED_PROBLEMS = 50


def _one_problem(error: Any, file: str) -> ManifestError:
    loc = [str(part) for part in error["loc"]]
    job = int(loc[1]) if len(loc) > 1 and loc[0] == "jobs" and loc[1].isdigit() else None
    field = ".".join(loc[2:] if job is not None else loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(), n=1, cutoff=0.7)
        if close and close[0] == loc[-1]:  # a real key, at the wrong level
            hint = f"{loc[-1]!r} is not a key here, only {_where_allowed(loc[-1])};"
        else:
            hint = f"did you mean {close[0]!r}?" if close else "check the spelling"
        message = f"unknown key ({hint} see README 'Manifest')"
    elif error["type"] == "missing":
        message = "required"
    else:
        message = f"{error['msg']} (got {shown(error.get('input'))})"
    return ManifestError(message, file=file, job=job, field=field)


_SECTION_NAMES = {
    "Profile": "a provider profile",
    "_Limits": "limits:",
    "Price": "a pricing: entry",
    "MaskFields": "mask: {path, optional}",
    "JobFields": "defaults: or a job",
    "Document": "the top level",
    "TableSource": "a jobs_from: entry",
    "BatchSettings": "a provider's batch:",
}


def _where_allowed(key: str) -> str:
    """Which sections of the manifest take `key`, in words (`in defaults: or a job`)."""
    models = _Strict.__subclasses__()
    owners = [_SECTION_NAMES.get(m.__name__, m.__name__) for m in models if key in m.model_fields]
    return "in " + " or ".join(owners)


def _known_keys() -> list[str]:
    """Every key the manifest format has, at any level: what a typo is measured against."""
    return sorted({name for model in _Strict.__subclasses__() for name in model.model_fields})


def profile_from(name: str, raw: Profile, file: str) -> ProviderProfile:
    field = f"providers.{name}"
    if raw.dialect not in DIALECTS:
        raise ManifestError(
            f"unknown dialect {raw.dialect!r}; supported: {', '.join(DIALECTS)}",
            file=file,
            field=f"{field}.dialect",
        )
    if not raw.base_url.startswith(("http://", "https://")):
        raise ManifestError(
            "must start with http:// or https://", file=file, field=f"{field}.base_url"
        )
    if raw.auth == "x402":
        if not dialect_named(raw.dialect).wallet_sign_in:
            raise ManifestError(
                "x402 wallet sign-in is Venice's; use api_key_env", file=file, field=f"{field}.auth"
            )
        if not raw.wallet_key_env or raw.api_key_env:
            raise ManifestError(
                "auth: x402 needs wallet_key_env (the env var holding the wallet's private "
                "key) and no api_key_env",
                file=file,
                field=f"{field}.wallet_key_env",
            )
    elif raw.wallet_key_env:
        raise ManifestError(
            "wallet_key_env is only used with auth: x402", file=file, field=f"{field}.auth"
        )
    dialect = dialect_named(raw.dialect)
    if raw.mode == "batch" and not dialect.has_batch_api:
        raise ManifestError(
            "mode: batch is OpenAI's Batch API; only the openai dialect has it",
            file=file,
            field=f"{field}.mode",
        )
    if raw.batch is not None and raw.mode != "batch":
        raise ManifestError("batch: settings need mode: batch", file=file, field=f"{field}.batch")
    settings = raw.batch or BatchSettings()
    return ProviderProfile(
        name=name,
        dialect=raw.dialect,
        base_url=raw.base_url.rstrip("/"),
        api_key_env=raw.api_key_env,
        concurrency=raw.concurrency,
        requests_per_minute=raw.requests_per_minute or dialect.default_requests_per_minute,
        timeout_s=raw.timeout_s,
        auth=raw.auth,
        wallet_key_env=raw.wallet_key_env,
        breaker_failures=raw.breaker_failures or dialect.default_breaker_failures,
        max_reply_mb=raw.max_reply_mb,
        mode=raw.mode,
        batch_max_lines=settings.max_lines,
        batch_window=settings.completion_window,
    )


def prices_from(
    raw: Mapping[str, Mapping[str, Price]], profiles: Mapping[str, ProviderProfile], file: str
) -> dict[str, dict[str, object]]:
    """`pricing: {profile: {model: {...}}}`: token rates for openai, per edit for venice."""
    prices: dict[str, dict[str, object]] = {}
    for name, models in raw.items():
        if name not in profiles:
            raise ManifestError(
                f"no provider profile named {name!r} (have: {', '.join(profiles)})",
                file=file,
                field=f"pricing.{name}",
            )
        dialect = dialect_named(profiles[name].dialect)
        for model, price in models.items():
            try:
                prices.setdefault(name, {})[model] = dialect.price_from_fields(
                    price.model_dump(exclude_none=True)
                )
            except ValueError as exc:
                raise ManifestError(str(exc), file=file, field=f"pricing.{name}.{model}") from exc
    return prices
