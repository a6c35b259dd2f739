"""The pool that sends jobs: `pool.py` (workers, claims, retries, stops, finishing),
`attempt.py` (one request with its journal, cost and feedback to the gate), `retry.py`
(what is retried and how long to wait), `pacing.py` (per-provider gate: concurrency, rate,
weather), `budget.py` (run limits), `pricing.py` (price books), `ports.py` (what the
engine needs from the world). No HTTP, SQL or image library here."""
