"""A manifest read for its settings only (a re-run finding its database): the top-level
`jobs:` list is parsed by libyaml but never composed or built, and the rest comes out as a
whole reading gives it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from runner.manifest import yaml_load
from runner.manifest.yaml_load import load

JOBS = "".join(
    f"  - {{image: a{n}.png, prompt: 'job {n}', params: {{n: 1}}}}\n" for n in range(300)
)
DOCUMENTS = {
    "block": "providers: {p: {dialect: openai}}\noutput_dir: out\njobs:\n" + JOBS,
    "flow": "output_dir: out\njobs: [{image: a.png}, {image: b.png, prompt: x}]\nlimits: {a: 1}\n",
    "alias into settings": "defaults: &d {model: m}\njobs:\n  - <<: *d\n    image: a.png\nx: *d\n",
    "anchor inside jobs": "jobs:\n  - &j {image: a.png}\nx: *j\n",
    "quoted key": '"jobs": [1, 2]\nb: 3\n',
    "tagged key": "!!str jobs: [1, 2]\nb: 3\n",
    "not a list": "jobs: {a: 1}\nb: [1]\n",
    "nested jobs key": "providers: {jobs: [1, 2]}\njobs: [3]\n",
    "jobs as a value": "name: jobs\nother: [1, 2]\n",
    "jobs last and empty": "a: 1\njobs: []\n",
    "no jobs": "a: [1, 2]\n",
    "merge at the top": "base: &b {x: 1}\n<<: *b\njobs: [1]\n",
    "not a mapping": "- 1\n- jobs\n",
    "empty": "",
}


def settings_of(text: str) -> Any:
    """What a settings-only reading must give: the whole reading, its jobs list emptied."""
    whole = load(text)
    if isinstance(whole, dict) and isinstance(whole.get("jobs"), list):
        whole["jobs"] = []
    return whole


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_the_settings_are_what_a_whole_reading_gives(text: str) -> None:
    assert load(text, unbuilt="jobs") == settings_of(text)


def test_the_jobs_values_are_never_composed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Finding each scalar's type (a Python call per value) was most of the reading.
    resolved: list[str] = []
    real: Any = yaml.resolver.BaseResolver.resolve

    def counted(self: Any, kind: Any, value: Any, implicit: Any) -> Any:
        resolved.append(value)
        return real(self, kind, value, implicit)

    monkeypatch.setattr(yaml.resolver.BaseResolver, "resolve", counted)

    assert load(DOCUMENTS["block"], unbuilt="jobs")["jobs"] == []
    assert 0 < len(resolved) < 20 and "job 7" not in resolved
    resolved.clear()
    load(DOCUMENTS["block"])
    assert "job 7" in resolved  # a whole reading does compose them


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("jobs: [1]\njobs: [2]\n", "duplicate key 'jobs'"),
        ("a: {b: 1, b: 2}\njobs: [1]\n", "duplicate key 'b'"),
        ("jobs: [1, {a: ]\nb: 2\n", "expected"),  # libyaml's syntax error, in the jobs
        ("a: 1\n---\nb: 2\n", "single document"),
        ("a: " + "[" * 70 + "]" * 70 + "\njobs: [1]\n", "nested more than 64 levels"),
        ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nested more than 64 levels"),
        (
            'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
            + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            )
            + "jobs: [1]\n",
            "expand to more than 100,000",
        ),
        ("a: &a [1, *a]\njobs: [1]\n", "contains it"),
    ],
    ids=[
        "duplicate jobs",
        "duplicate in settings",
        "syntax",
        "two documents",
        "deep",
        "deeper",
        "alias bomb",
        "alias inside itself",
    ],
)
def test_what_a_whole_reading_refuses_a_settings_reading_refuses(text: str, said: str) -> None:
    with pytest.raises(yaml.YAMLError, match=said):
        load(text)
    with pytest.raises(yaml.YAMLError, match=said):
        load(text, unbuilt="jobs")


def test_an_anchor_inside_the_jobs_is_composed_after_all() -> None:
    events = list(yaml.parse(DOCUMENTS["anchor inside jobs"], Loader=yaml.CSafeLoader))
    assert any(getattr(e, "anchor", None) == "j" for e in events)
    parser = yaml_load._Loader(DOCUMENTS["anchor inside jobs"])
    try:
        assert yaml_load._skimmed(parser, "jobs") is None  # so the fallback reads it whole
    finally:
        parser.dispose()


def test_a_collection_as_a_key_is_counted_as_one_key() -> None:
    # `? [a, b] : jobs`: the value "jobs" is no key; the `jobs` after it is (composed only:
    # a list as a key is refused when built, by either reading).
    parser = yaml_load._Loader("? [a, b]\n: jobs\njobs: [1]\nafter: [2]\n")
    try:
        events = yaml_load._skimmed(parser, "jobs")
    finally:
        parser.dispose()
    assert events is not None
    root: Any = yaml_load._Replay(events).get_single_node()
    values = {key.value: value for key, value in root.value if isinstance(key.value, str)}
    assert values["jobs"].value == [] and [n.value for n in values["after"].value] == ["2"]
    assert [n.value for n in root.value[0][0].value] == ["a", "b"]
    assert root.value[0][1].value == "jobs"
