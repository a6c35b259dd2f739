"""Files on disk: `preflight.py` (input checks before sending), `outputs.py` (durable,
never-replacing writes), `journal.py` (completions the database could not take),
`procs.py` (is a pid alive), `html_report.py` (the before/after report), `object_store.py`
(outputs in an S3 bucket), `local.py` (the engine's Files port: disk or bucket)."""
