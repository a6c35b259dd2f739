"""Reading a manifest's YAML safely: PyYAML's safe loader, with three refusals it lacks.

- Duplicate keys, which plain YAML silently overwrites.
- Nesting deeper than MAX_DEPTH: the composer recurses once per level, so 20,000 `[` would
  end in a RecursionError (or, with a raised recursion limit, a crash).
- Aliases that expand into more than MAX_ALIAS_EXPANSION values ("billion laughs"): a
  529-byte document can stand for billions of values, and anything that walks it (a
  validator, an error message) would take minutes and gigabytes. The expanded size is
  counted on the composed node graph, each shared node once, before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64
MAX_ALIAS_EXPANSION = 100_000  # values that aliases may add beyond the document's own
_MERGE = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.YAMLError):
    """The document is valid YAML that the runner will not expand."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # `<<: *defaults`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so in its words
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:80]!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """The document's value; yaml.YAMLError (YamlRefused included) for anything refused."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError as exc:  # a backstop: MAX_DEPTH stops real documents first
            raise YamlRefused(f"nested more than {MAX_DEPTH} levels deep") from exc
        if node is None:
            return None
        _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_aliases(root: Node) -> None:
    """Refuse a graph whose aliases expand past the budget, or that contains itself."""
    distinct, expanded = _sizes(root)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        raise YamlRefused(
            f"its aliases (*name) expand to more than {MAX_ALIAS_EXPANSION:,} values; "
            "write the values out, or use fewer nested aliases",
            root.start_mark,
        )


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
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
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
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)
    return len(size), size[id(root)]
