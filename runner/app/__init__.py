"""The use cases, one function per command: `run`, `validate`, `status`, `jobs`, `retry`,
`cancel`, `export`, `report`, `models`. The CLI and library callers import them from here.

- `context.py`: `Options`, and opening a manifest with its database (`opened`).
- `run_jobs.py`: `runner run`, from a manifest to a finished (or cleanly stopped) run.
- `batch_mode.py`: `mode: batch` profiles within a run: collect ended batches, submit new.
- `commands.py`: every other command.
- `table_export.py`: `export --format parquet | imagefolder`.
"""

from runner.app.commands import (
    JobFilter,
    Options,
    RunOutcome,
    cancel,
    export,
    export_dataset,
    jobs,
    models,
    report,
    retry,
    run,
    status,
    validate,
)

__all__ = [
    "JobFilter",
    "Options",
    "RunOutcome",
    "cancel",
    "export",
    "export_dataset",
    "jobs",
    "models",
    "report",
    "retry",
    "run",
    "status",
    "validate",
]
