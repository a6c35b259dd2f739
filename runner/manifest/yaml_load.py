"""Reading a manifest's YAML safely: PyYAML's safe loader (libyaml's C parser where PyYAML
has it: a manifest of 100,000 entries parses several times faster), with three refusals it
lacks.

- Duplicate keys, which plain YAML silently overwrites.
- Nesting deeper than MAX_DEPTH: the composer recurses once per level, so 20,000 `[` would
  end in a RecursionError (or, with a raised recursion limit, a crash).
- Aliases that expand into more than MAX_ALIAS_EXPANSION values ("billion laughs"): a
  529-byte document can stand for billions of values, and anything that walks it (a
  validator, an error message) would take minutes and gigabytes. The expanded size is
  counted on the composed node graph, each shared node once, before anything is built.

A reading of the settings only (`load(text, unbuilt="jobs")`, what a re-run reads to find
its database) takes libyaml's events and leaves the jobs' out before composing the rest.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_DEPTH = 64
MAX_ALIAS_EXPANSION = 100_000  # values that aliases may add beyond the document's own
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"


class YamlRefused(yaml.YAMLError):
    """The document is valid YAML that the runner will not expand."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


# libyaml composes in C, so depth is checked on the composed nodes (`_sizes`); it refuses
# nesting past 1,000 levels itself, long before a C stack could run out.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NoDuplicateKeys(SafeConstructor):
    """PyYAML's safe constructor, but a mapping with a key twice is refused."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *defaults`: its keys may be overridden here
                continue
            # A plain string key is its text: not built twice (here and by the base class).
            # Other keys are built, so `1` and `0x1` are found to be one key.
            is_text = key_node.tag == _STR and isinstance(key_node, ScalarNode)
            key = key_node.value if is_text else self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so in its words
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:80]!r}", key_node.start_mark
                )
        built: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return built


class _Loader(_Base, _NoDuplicateKeys):  # type: ignore[misc]
    """libyaml's parser and composer (PyYAML's pure-Python ones where it has no libyaml)."""

    def __init__(self, text: str) -> None:
        _Base.__init__(self, text)


class _Replay(Composer, _NoDuplicateKeys, Resolver):
    """Composes and builds a document from events already parsed (`_skimmed`): PyYAML's
    own composer, constructor and resolver, fed from a list instead of a parser."""

    def __init__(self, events: list[Event]) -> None:
        Composer.__init__(self)
        _NoDuplicateKeys.__init__(self)
        Resolver.__init__(self)
        self._events = events
        self._next = 0

    def check_event(self, *choices: type[Event]) -> bool:
        if self._next >= len(self._events):
            return False
        return not choices or isinstance(self._events[self._next], choices)

    def peek_event(self) -> Event:
        return self._events[self._next]

    def get_event(self) -> Event:
        event = self._events[self._next]
        self._next += 1
        return event

    def dispose(self) -> None:
        self._events = []


def load(text: str, *, unbuilt: str | None = None) -> Any:
    """The document's value; yaml.YAMLError (YamlRefused included) for anything refused.
    `unbuilt`: a top-level key whose sequence is parsed (libyaml still refuses what it
    cannot parse) but neither composed, walked nor built: it comes back empty, for a reader
    that needs the rest only (a manifest's settings without its 100,000 jobs)."""
    loader: Any = _Loader(text)
    try:
        try:
            if unbuilt is not None:
                # libyaml's events, with that sequence's left out, composed here: composing
                # every job's values (a Python call per scalar to find its type) was two
                # thirds of a no-op re-run's reading of its manifest.
                events = _skimmed(loader, unbuilt)
                loader.dispose()
                # None: an anchor is set inside it, which the rest may name: composed whole.
                loader = _Replay(events) if events is not None else _Loader(text)
            node = loader.get_single_node()
        except RecursionError as exc:  # a backstop: MAX_DEPTH stops real documents first
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep") from exc
        except yaml.MarkedYAMLError as exc:
            if "maximum nesting depth" not in str(exc.problem):
                raise
            # libyaml's own limit (1,000 levels), reached before ours could be counted.
            mark = exc.problem_mark
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", mark) from None
        if node is None:
            return None
        if unbuilt is not None and isinstance(node, MappingNode):
            # Dropped before the walks below: what is never built cannot recurse or expand.
            node.value = [
                (key, _emptied(value) if _names(key, unbuilt) else value)
                for key, value in node.value
            ]
        if "&" in text:
            _check_aliases(node)
        else:  # no anchor, so no alias: only the depth to check (a third of the walk's cost)
            _check_depth(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _skimmed(parser: Any, name: str) -> list[Event] | None:
    """The document's events with the top-level `name` key's sequence emptied (its start
    and end kept, nothing between), or None if an anchor is set inside it: an alias
    elsewhere could name it, so it must be composed after all. Syntax errors anywhere
    are libyaml's, as in a full reading."""
    events: list[Event] = []
    open_nodes: list[list[int]] = []  # per open collection: [is a mapping, children so far]
    value_of_name = False
    while parser.check_event():
        event = parser.get_event()
        if value_of_name and isinstance(event, SequenceStartEvent):
            events.append(event)
            if not _skip_sequence(parser, events):
                return None
            open_nodes[-1][1] += 1
            value_of_name = False
            continue
        value_of_name = False
        events.append(event)
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            open_nodes.append([isinstance(event, MappingStartEvent), 0])
            continue
        if isinstance(event, MappingEndEvent | SequenceEndEvent):
            open_nodes.pop()
        elif not isinstance(event, ScalarEvent | AliasEvent):
            continue  # the stream's and documents' starts and ends
        elif (
            len(open_nodes) == 1
            and open_nodes[0][0]
            and open_nodes[0][1] % 2 == 0  # a key of the top-level mapping
            and isinstance(event, ScalarEvent)
            and event.value == name
            and event.tag in (None, "!", _STR)
        ):
            value_of_name = True
        if open_nodes:
            open_nodes[-1][1] += 1
    return events


def _skip_sequence(parser: Any, events: list[Event]) -> bool:
    """Past the events of a sequence whose start was read, to its end (appended); False
    if an anchor is set inside it."""
    depth = 1
    while depth:
        event = parser.get_event()
        if getattr(event, "anchor", None) is not None and not isinstance(event, AliasEvent):
            return False
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            depth += 1
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            depth -= 1
    events.append(event)
    return True


def _names(key: Node, name: str) -> bool:
    return isinstance(key, ScalarNode) and key.tag == _STR and key.value == name


def _emptied(value: Node) -> Node:
    if not isinstance(value, SequenceNode):
        return value  # not a list: the schema says what is wrong with it
    return SequenceNode(value.tag, [], value.start_mark, value.end_mark, value.flow_style)


def _check_aliases(root: Node) -> None:
    """Refuse a graph nested too deep, whose aliases expand past the budget, or that
    contains itself."""
    distinct, expanded = _sizes(root)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        raise YamlRefused(
            f"its aliases (*name) expand to more than {MAX_ALIAS_EXPANSION:,} values; "
            "write the values out, or use fewer nested aliases",
            root.start_mark,
        )


def _check_depth(root: Node) -> None:
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        if isinstance(node, SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            stack.extend((part, depth + 1) for pair in node.value for part in pair)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _sizes(root: Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded), without recursion: an alias
    chain may be far longer than the document is deep."""
    size: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[Node, bool, int]] = [(root, False, 1)]
    while stack:
        node, children_done, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        key = id(node)
        if children_done:
            in_progress.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
            if size[key] > MAX_ALIAS_EXPANSION * 100:  # stop counting long before it hurts
                return len(size), size[key]
            continue
        if key in size:
            continue
        if key in in_progress:
            raise YamlRefused("an alias refers to a value that contains it", node.start_mark)
        in_progress.add(key)
        stack.append((node, True, depth))
        stack.extend(
            (child, False, depth + 1) for child in _children(node) if id(child) not in size
        )
    return len(size), size[id(root)]
