"""Reading untrusted documents (scenario JSON/YAML) with their size bounded before any walk.

YAML lets a few hundred bytes describe an exponentially large value: anchors and aliases share
nodes, and every walk of the constructed value (validation, the engine, rendering) expands the
sharing. A self-referencing alias (`steps: &s [*s]`) makes the value infinite. The loader here
counts, while composing, how many nodes the document has with every alias expanded (memoized
per node, so counting costs the size of the text, not of the expansion) and refuses a
document over IRQLAB_MAX_DOCUMENT_NODES or deeper than IRQLAB_MAX_DOCUMENT_DEPTH, and any alias
to a node that is still being composed (recursion). A JSON document is walked once,
iteratively, against the same two limits. Either way nothing larger reaches the engine.

PyYAML's own SafeLoader stays the parser (C-free, already a dependency): hardened YAML
libraries either drop anchors altogether (the library scenarios use them) or add no bound on
their expansion, so a subclass that bounds it is the smaller change.

The YAML grammar is also held to irqlab's one integer grammar (app/engine/ints.py): YAML 1.1
would read `0b1000000`, `6_4`, `0o100`, `1:04` as integers and `yes`/`on` as booleans; here
plain scalars are integers only as decimal or 0x… digits and booleans only as true/false
(other spellings stay strings, which the validators then refuse where a number is needed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from .problems import DocumentError

DEFAULT_MAX_NODES = 200_000
DEFAULT_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    max_nodes: int = DEFAULT_MAX_NODES
    max_depth: int = DEFAULT_MAX_DEPTH


def _too_many(limits: DocumentLimits) -> DocumentError:
    return DocumentError(
        f"the document has more than {limits.max_nodes} values with every YAML alias "
        "expanded (IRQLAB_MAX_DOCUMENT_NODES)", "body", error_type="limit_exceeded",
        limit="IRQLAB_MAX_DOCUMENT_NODES", maximum=limits.max_nodes)


def _too_deep(limits: DocumentLimits) -> DocumentError:
    return DocumentError(
        f"the document is nested more than {limits.max_depth} levels deep "
        "(IRQLAB_MAX_DOCUMENT_DEPTH)", "body", error_type="limit_exceeded",
        limit="IRQLAB_MAX_DOCUMENT_DEPTH", maximum=limits.max_depth)


DEFAULT_LIMITS = DocumentLimits()


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that bounds the expanded size and depth of what it composes and
    refuses recursive aliases; plain-scalar integers and booleans as in JSON."""

    def __init__(self, stream: str | bytes, limits: DocumentLimits) -> None:
        super().__init__(stream)
        self.limits = limits
        self._sizes: dict[int, int] = {}  # id(node) -> expanded node count
        self._open: list[str | None] = []  # anchors of the nodes being composed
        self._keep: list[yaml.Node] = []  # keeps ids in _sizes unique

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            anchor = event.anchor
            if anchor in self._open:
                raise DocumentError(
                    f"alias *{anchor} refers to a value that contains it (a recursive "
                    f"document), line {event.start_mark.line + 1}", "body",
                    error_type="yaml_invalid", line=event.start_mark.line + 1,
                    column=event.start_mark.column + 1)
            return super().compose_node(parent, index)
        if len(self._open) >= self.limits.max_depth:
            raise _too_deep(self.limits)
        event = self.peek_event()  # type: ignore[no-untyped-call]
        self._open.append(getattr(event, "anchor", None))
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open.pop()
        if node is None:
            return None
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        if size > self.limits.max_nodes:
            raise _too_many(self.limits)
        self._sizes[id(node)] = size
        self._keep.append(node)
        return node

    def _size(self, node: yaml.Node) -> int:
        return self._sizes.get(id(node), 1)


# JSON's integers (and 0x… hex, irqlab's second spelling) and booleans, in place of YAML 1.1's.
BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0[xX][0-9a-fA-F]+)$"),
    list("-+0123456789"))
BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    return str(loader.construct_scalar(node)).lower() == "true"  # type: ignore[arg-type]


BoundedLoader.add_constructor("tag:yaml.org,2002:bool", _bool)


def load_yaml(text: bytes | str, limits: DocumentLimits) -> Any:
    """One YAML document, bounded (module docstring); a YAML error is DocumentError at
    `body` with its line and column; the result holds only JSON values."""
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text, limits)  # its reader already refuses bad characters
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            raise DocumentError(f"YAML syntax error: {problem}", "body",
                                error_type="yaml_invalid") from None
        line, column = mark.line + 1, mark.column + 1
        raise DocumentError(f"YAML syntax error at line {line}, column {column}: {problem}",
                            "body", error_type="yaml_invalid", line=line,
                            column=column) from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"not YAML: {exc}", "body", error_type="yaml_invalid") from None
    except (RecursionError, OverflowError, ValueError) as exc:
        raise DocumentError(f"not YAML: {type(exc).__name__}", "body",
                            error_type="yaml_invalid") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_values(doc, limits)
    return doc


def load_json(text: bytes | str, limits: DocumentLimits) -> Any:
    """A JSON document (NaN/Infinity refused), bounded as YAML is."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        doc = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}", "body", error_type="json_invalid",
                            line=exc.lineno, column=exc.colno) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DocumentError(f"not JSON: {exc}", "body", error_type="json_invalid") from None
    except RecursionError:
        raise _too_deep(limits) from None
    check_values(doc, limits)
    return doc


def check_values(doc: Any, limits: DocumentLimits) -> None:
    """Walk a parsed document once, iteratively: at most max_nodes values, max_depth levels,
    and only what JSON can say (YAML's timestamps, binary, non-finite floats and keys that are
    not strings or integers are refused, so a YAML document runs as its JSON twin)."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    count = 0
    while stack:
        value, path, depth = stack.pop()
        count += 1
        if count > limits.max_nodes:
            raise _too_many(limits)
        if depth > limits.max_depth:
            raise _too_deep(limits)
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, str | int):
                    raise DocumentError(f"object keys are strings or integers, not {key!r}",
                                        path or "body")
                stack.append((item, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((item, f"{path}[{i}]", depth + 1))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise DocumentError(f"{value} is not a JSON number", path or "body")
        elif value is not None and not isinstance(value, str | int | bool):
            raise DocumentError(f"a YAML {type(value).__name__} is not a JSON value (quote it)",
                                path or "body")
