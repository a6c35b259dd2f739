"""The pool that sends jobs: `pool.py` (workers, stops, accounting), `retry.py` (what is
retried and how long to wait), `pacing.py` (per-provider gate: concurrency, rate, weather),
`budget.py` (run limits), `pricing.py` (price books). No HTTP, SQL or image library here."""
