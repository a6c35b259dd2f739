"""What each provider speaks: `openai/` and `venice/` (one folder per dialect), the shared
HTTP reply handling (`base.py`, `replies.py`, `transfer.py`), parameter rules (`params.py`)
and the factory that builds a provider from a profile (`factory.py`)."""
