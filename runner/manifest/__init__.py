"""From a YAML file to jobs: `yaml_load.py` (bounded YAML), `schema.py` (the document's
pydantic models, provider profiles and prices), `expand.py` (defaults, globs, job keys),
`tables.py` (`jobs_from:` tables read in chunks), `digests.py` (input hashes, cached),
`output_rules.py` (output paths checked against the inputs and the file system),
`durations.py` (deadlines and durations)."""
