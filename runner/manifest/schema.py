"""YAML manifest → validated, expanded JobSpecs with content keys.

Every problem becomes one ManifestError line naming the file, the job and the field.
Missing input files are *not* manifest errors: those jobs fail at pre-flight, alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.dialects import DIALECTS, dialect_named
from runner.errors import ManifestError, shown
from runner.manifest import yaml_load
from runner.manifest.digests import Digester
from runner.manifest.output_rules import check_outputs
from runner.records import JobSpec
from runner.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_REPLY_MB,
    DEFAULT_OUTPUT_NAME,
    DEFAULT_READ_TIMEOUT_S,
)

KEY_VERSION = 1  # bump only if the key recipe changes: it would re-send every job


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    name: str
    dialect: str
    base_url: str
    api_key_env: str | None
    concurrency: int
    requests_per_minute: float | None
    timeout_s: float
    auth: str = "api_key"  # or "x402": Venice wallet sign-in with the key in wallet_key_env
    wallet_key_env: str | None = None
    # Failures (any non-2xx) within 30 s that pause the provider for 30 s; None = no breaker.
    breaker_failures: int | None = None
    max_reply_mb: float = DEFAULT_MAX_REPLY_MB  # largest reply per image asked for

    @property
    def secret_env(self) -> str | None:
        """The env var this profile's credential is read from."""
        return self.wallet_key_env if self.auth == "x402" else self.api_key_env


@dataclass(frozen=True, slots=True)
class RunLimits:
    """When a run stops taking new jobs (exit 75); flags override the manifest's `limits:`."""

    deadline: str | None = None  # as written: a duration (6h) or a clock time (07:30)
    max_jobs: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    providers: Mapping[str, ProviderProfile]
    jobs: tuple[JobSpec, ...]
    output_dir: Path
    database: str | None  # as written: a path relative to the manifest, or a URL
    limits: RunLimits = field(default_factory=RunLimits)
    # provider -> model -> price, from the manifest's `pricing:`; built-ins fill the rest.
    pricing: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Profile(_Strict):
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


class _Limits(_Strict):
    deadline: str | None = None
    max_jobs: int | None = Field(None, ge=1)
    max_cost: float | None = Field(None, gt=0)


class _Price(_Strict):
    """Per million tokens (openai dialect) or per edit (venice)."""

    text_input: float | None = Field(None, ge=0)
    image_input: float | None = Field(None, ge=0)
    image_output: float | None = Field(None, ge=0)
    per_edit: float | None = Field(None, ge=0)
    extra_image: float | None = Field(None, ge=0)


class _JobFields(_Strict):
    image: str | None = None
    prompt: str | None = None
    mask: str | None = None
    provider: str | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    output_name: str | None = None


class _Document(_Strict):
    providers: dict[str, _Profile] = Field(min_length=1)
    defaults: _JobFields = _JobFields()
    output_dir: str = "out"
    database: str | None = None
    limits: _Limits = _Limits()
    pricing: dict[str, dict[str, _Price]] = Field(default_factory=dict)
    jobs: list[_JobFields] = Field(min_length=1)


def read_document(path: Path) -> _Document:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest: {exc}", file=name) from exc
    try:
        raw = yaml_load.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "" if isinstance(exc, yaml_load.YamlRefused) else "invalid YAML: "
        raise ManifestError(f"{where}{kind}{problem}", file=name) from exc
    if not isinstance(raw, dict):
        raise ManifestError("the manifest must be a mapping with providers: and jobs:", file=name)
    try:
        return _Document.model_validate(raw)
    except ValidationError as exc:
        raise _translate(exc, name) from None


def _translate(exc: ValidationError, file: str) -> ManifestError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    job = int(loc[1]) if len(loc) > 1 and loc[0] == "jobs" and loc[1].isdigit() else None
    field = ".".join(loc[2:] if job is not None else loc)
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see README 'Manifest')"
    elif error["type"] == "missing":
        message = "required"
    else:
        message = f"{error['msg']} (got {shown(error.get('input'))})"
    more = exc.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ManifestError(message, file=file, job=job, field=field)


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A validated manifest whose inputs are not hashed yet (hashing wants the database's
    digest cache, and where the database is comes from the manifest)."""

    path: Path
    providers: Mapping[str, ProviderProfile]
    output_dir: Path
    database: str | None
    drafts: tuple[_Draft, ...]
    limits: RunLimits = field(default_factory=RunLimits)
    pricing: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def resolve(
        self, digester: Digester | None = None, known_outputs: Collection[str] = frozenset()
    ) -> Manifest:
        """Hash the inputs and make the job specs, keyed by content. A glob's matches that
        the database knows as outputs (`known_outputs`, absolute paths) are not inputs."""
        drafts = _without_known_outputs(self.drafts, known_outputs, str(self.path))
        digests = (digester or Digester()).digest_many(
            [p for d in drafts for p in (d.image, d.mask) if p is not None]
        )
        jobs: dict[str, JobSpec] = {}
        for draft in drafts:
            spec = draft.spec(digests, self.output_dir)
            jobs.setdefault(spec.key, spec)  # an identical entry twice is the same work once
        specs = tuple(jobs.values())
        inputs = {path for d in drafts for path in (d.image, d.mask) if path is not None}
        check_outputs(specs, inputs, str(self.path))
        return Manifest(
            self.path,
            self.providers,
            specs,
            self.output_dir,
            self.database,
            self.limits,
            self.pricing,
        )


def parse_manifest(path: Path) -> ParsedManifest:
    """Read and validate a manifest and expand its globs; exit-2 material raises here."""
    path = _absolute(path)
    doc = read_document(path)
    base = path.parent
    output_dir = _absolute(base / doc.output_dir)
    profiles = {name: _profile(name, p, str(path)) for name, p in doc.providers.items()}
    drafts = tuple(
        draft
        for index, entry in enumerate(doc.jobs)
        for draft in _expand(index, entry, doc, profiles, (base, output_dir), str(path))
    )
    limits = RunLimits(doc.limits.deadline, doc.limits.max_jobs, doc.limits.max_cost)
    return ParsedManifest(
        path,
        profiles,
        output_dir,
        doc.database,
        drafts,
        limits,
        _pricing(doc.pricing, profiles, str(path)),
    )


def _pricing(
    raw: Mapping[str, Mapping[str, _Price]], profiles: Mapping[str, ProviderProfile], file: str
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


def load_manifest(path: Path, digester: Digester | None = None) -> Manifest:
    return parse_manifest(path).resolve(digester)


def _profile(name: str, raw: _Profile, file: str) -> ProviderProfile:
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
    )


@dataclass(frozen=True, slots=True)
class _Draft:
    entry: int
    image: Path
    mask: Path | None
    prompt: str
    provider: ProviderProfile
    model: str
    params: Mapping[str, Any]
    output_name: str
    glob: str | None = None  # the pattern that matched `image`; None when named explicitly

    def spec(self, digests: Mapping[Path, str | None], output_dir: Path) -> JobSpec:
        image_sha = digests.get(self.image)
        mask_sha = digests.get(self.mask) if self.mask else None
        return JobSpec(
            key=job_key(self, image_sha, mask_sha),
            entry=self.entry,
            image=self.image,
            mask=self.mask,
            prompt=self.prompt,
            provider=self.provider.name,
            model=self.model,
            params=self.params,
            output_dir=output_dir,
            output_name=self.output_name,
            image_sha256=image_sha,
            mask_sha256=mask_sha,
        )


def job_key(draft: _Draft, image_sha: str | None, mask_sha: str | None) -> str:
    """Content hash: the same inputs to the same provider profile are the same job.
    An unreadable file is keyed by its path, so fixing the file makes a new job."""
    payload = {
        "v": KEY_VERSION,
        "image": image_sha or f"unreadable:{draft.image}",
        "mask": (mask_sha or f"unreadable:{draft.mask}") if draft.mask else None,
        "prompt": draft.prompt,
        "provider": draft.provider.name,
        "model": draft.model,
        "params": draft.params,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _expand(
    index: int,
    entry: _JobFields,
    doc: _Document,
    profiles: Mapping[str, ProviderProfile],
    folders: tuple[Path, Path],
    file: str,
) -> list[_Draft]:
    """One job entry's drafts; `folders` is (the manifest's folder, the output folder)."""
    base, output_dir = folders
    merged = _merge(doc.defaults, entry)

    def fail(field: str, message: str) -> ManifestError:
        return ManifestError(message, file=file, job=index, field=field)

    image = merged.get("image")
    prompt = merged.get("prompt")
    if not image:
        raise fail("image", "required")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("prompt", "required (the edit instruction)")
    provider = _pick_provider(merged.get("provider"), profiles, fail)
    dialect = dialect_named(provider.dialect)
    model = merged.get("model") or dialect.default_model
    if problem := dialect.check_model(model):
        raise fail("model", problem)
    params = merged.get("params") or {}
    if found := dialect.check_params(params):
        raise fail(f"params.{found[0]}", found[1])
    output_name = merged.get("output_name") or DEFAULT_OUTPUT_NAME
    if problem := _check_template(output_name):
        raise fail("output_name", problem)
    images = _image_paths(image, base, fail, output_dir)
    mask_template = merged.get("mask")
    if mask_template and glob.has_magic(mask_template):
        raise fail("mask", "cannot be a glob; use {stem} to pair each image with its mask")
    return [
        _Draft(
            entry=index,
            image=path,
            mask=_mask_path(mask_template, path, base, fail) if mask_template else None,
            prompt=prompt,
            provider=provider,
            model=model,
            params=params,
            output_name=output_name,
            glob=image if glob.has_magic(image) else None,
        )
        for path in images
    ]


def _merge(defaults: _JobFields, entry: _JobFields) -> dict[str, Any]:
    """A job's own value wins; params merge key by key."""
    merged = defaults.model_dump(exclude_none=True)
    own = entry.model_dump(exclude_none=True)
    params = {**merged.get("params", {}), **own.get("params", {})}
    merged.update(own)
    merged["params"] = params
    return merged


def _pick_provider(
    name: Any, profiles: Mapping[str, ProviderProfile], fail: Any
) -> ProviderProfile:
    if name is None:
        if len(profiles) == 1:
            return next(iter(profiles.values()))
        raise fail("provider", f"required when there are several providers ({', '.join(profiles)})")
    if name not in profiles:
        raise fail("provider", f"no provider profile named {name!r} (have: {', '.join(profiles)})")
    return profiles[name]


def _absolute(path: Path) -> Path:
    """The real path where there is one; a symlink loop (RuntimeError in Python 3.11) or an
    unreadable folder leaves it as written, for pre-flight to fail that job alone."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.normpath(path.absolute()))


def _image_paths(pattern: str, base: Path, fail: Any, output_dir: Path) -> list[Path]:
    """An explicit path as it is; a glob's matches, sorted, never under the output folder
    (a re-run must never pay to edit its own results)."""
    full = base / Path(pattern).expanduser()
    if not glob.has_magic(pattern):
        return [_absolute(full)]
    # glob.glob, not Path.glob: it takes absolute patterns and '**' across the whole pattern.
    found = {
        _absolute(Path(hit))
        for hit in glob.glob(str(full), recursive=True)  # noqa: PTH207
        if Path(hit).is_file()
    }
    matches = sorted(path for path in found if not path.is_relative_to(output_dir))
    if not matches:
        why = " outside the output folder (output_dir)" if found else ""
        raise fail(
            "image", f"the glob {shown(pattern)} matched no file{why} (searched from {base})"
        )
    return matches


def _mask_path(template: str, image: Path, base: Path, fail: Any) -> Path:
    try:
        relative = template.format(stem=image.stem, name=image.name)
    except (KeyError, IndexError, ValueError) as exc:
        raise fail("mask", f"only {{stem}} and {{name}} may appear in braces ({exc})") from exc
    return _absolute(base / Path(relative).expanduser())


def _check_template(template: str) -> str | None:
    from runner.files.outputs import check_output_template  # lazy: outputs is an I/O module

    return check_output_template(template, Path("/output-dir-check"))


def _without_known_outputs(
    drafts: tuple[_Draft, ...], known_outputs: Collection[str], file: str
) -> tuple[_Draft, ...]:
    """Drop what globs matched among earlier outputs (of any manifest, any output folder):
    a re-run must never pay to edit its own results."""
    if not known_outputs:
        return drafts
    kept = tuple(d for d in drafts if d.glob is None or str(d.image) not in known_outputs)
    emptied = {d.entry for d in drafts if d.glob} - {d.entry for d in kept}
    if emptied:
        entry = min(emptied)
        pattern = next(d.glob for d in drafts if d.entry == entry)
        raise ManifestError(
            f"the glob {shown(pattern)} matched only earlier outputs (files the database "
            "records as outputs are never inputs)",
            file=file,
            job=entry,
            field="image",
        )
    return kept
