"""From a YAML file to jobs: `yaml_load.py` (bounded YAML), `schema.py` (pydantic schema,
defaults, globs, job keys), `digests.py` (input hashes, cached), `output_rules.py` (output
paths checked against inputs and the file system), `durations.py` (deadlines)."""
