"""The use cases, one function per command: `run`, `validate`, `status`, `jobs`, `retry`,
`cancel`, `export`, `report`, `models`. The CLI and library callers import them from here.

- `context.py`: `Options`, and opening a manifest with its database (`opened`).
- `run_jobs.py`: `runner run`, from a manifest to a finished (or cleanly stopped) run.
- `sending.py`: the sending half of a run (providers, pool, batch lanes, progress), loaded
  only when a run has something to send or collect.
- `batch_mode.py`: `mode: batch` profiles within a run: collect ended batches, submit new.
- `reading.py`: `runner status` and `runner jobs`, from the database alone.
- `commands.py`: every other command.
- `table_export.py`: `export --format parquet | imagefolder`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.app.commands import (
        cancel,
        export,
        export_dataset,
        models,
        report,
        retry,
        validate,
    )
    from runner.app.context import Options
    from runner.app.reading import JobFilter, jobs, list_jobs, status
    from runner.app.run_jobs import RunOutcome, run

# Each name is imported from its module when first used: `runner status` needs neither the
# HTTP clients nor Pillow nor pyarrow, and importing them all cost it half a second.
_HOMES = {
    "JobFilter": "reading",
    "Options": "context",
    "RunOutcome": "run_jobs",
    "cancel": "commands",
    "export": "commands",
    "export_dataset": "commands",
    "jobs": "reading",
    "list_jobs": "reading",
    "models": "commands",
    "report": "commands",
    "retry": "commands",
    "run": "run_jobs",
    "status": "reading",
    "validate": "commands",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "JobFilter",
    "Options",
    "RunOutcome",
    "cancel",
    "export",
    "export_dataset",
    "jobs",
    "list_jobs",
    "models",
    "report",
    "retry",
    "run",
    "status",
    "validate",
]
