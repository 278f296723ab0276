"""JUnit XML, the test-result format every CI system reads (Jenkins, GitLab, GitHub actions'
reporters, Buildkite, Azure, ...).

Generic on purpose: a TestSuite of TestCases knows nothing of scenarios, so `irqlab run`,
`irqlab suite` and (later) `irqlab explore` all write through `write_junit`. The output keeps to
the common subset that the widely used Jenkins/Ant "junit-10" schema accepts (tests/data holds
a copy written for the tests): a <testsuites> root; per <testsuite> the required name, tests,
failures and errors attributes, then <properties>, the <testcase>s and <system-out>; per
<testcase> a name, a classname, a time and at most one <failure> or <error> (message attribute
plus a text body) and <system-out>. That schema has no <properties> inside a <testcase>, and
GitLab ignores them anyway, so per-case facts belong in the case's name and its system-out.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Characters XML 1.0 cannot carry at all (even escaped): C0 controls but tab, LF and CR,
# surrogates and U+FFFE/U+FFFF. They are replaced, so a stray byte in a detail string cannot
# make the whole file unreadable to the CI.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


@dataclass
class Outcome:
    """Why a test case did not pass: `message` is the one-line summary CIs show in lists, `body`
    the detail shown when the case is opened."""

    message: str
    body: str = ""
    type: str = ""


@dataclass
class TestCase:
    __test__ = False  # not a pytest test class, whatever its name

    name: str
    classname: str
    time: float = 0.0
    failure: Outcome | None = None
    error: Outcome | None = None
    skipped: str | None = None
    system_out: str = ""


@dataclass
class TestSuite:
    __test__ = False

    name: str
    cases: list[TestCase] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    time: float | None = None
    timestamp: datetime | None = None
    system_out: str = ""

    @property
    def failures(self) -> int:
        return sum(1 for c in self.cases if c.failure is not None and c.error is None)

    @property
    def errors(self) -> int:
        return sum(1 for c in self.cases if c.error is not None)

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.cases if c.skipped is not None
                   and c.failure is None and c.error is None)

    @property
    def total_time(self) -> float:
        return self.time if self.time is not None else sum(c.time for c in self.cases)


def _seconds(t: float) -> str:
    return f"{max(t, 0.0):.3f}"


def _outcome(parent: ET.Element, tag: str, outcome: Outcome) -> None:
    el = ET.SubElement(parent, tag, {"message": _xml_text(outcome.message)})
    if outcome.type:
        el.set("type", _xml_text(outcome.type))
    el.text = _xml_text(outcome.body)


def to_element(suites: Sequence[TestSuite], name: str = "irqlab") -> ET.Element:
    root = ET.Element("testsuites", {
        "name": _xml_text(name),
        "tests": str(sum(len(s.cases) for s in suites)),
        "failures": str(sum(s.failures for s in suites)),
        "errors": str(sum(s.errors for s in suites)),
        "time": _seconds(sum(s.total_time for s in suites)),
    })
    host = socket.gethostname()
    for i, suite in enumerate(suites):
        stamp = (suite.timestamp or datetime.now(UTC)).astimezone(UTC)
        el = ET.SubElement(root, "testsuite", {
            "name": _xml_text(suite.name),
            "tests": str(len(suite.cases)),
            "failures": str(suite.failures),
            "errors": str(suite.errors),
            "skipped": str(suite.skipped),
            "time": _seconds(suite.total_time),
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": _xml_text(host),
            "id": str(i),
        })
        if suite.properties:
            props = ET.SubElement(el, "properties")
            for key, value in suite.properties.items():
                ET.SubElement(props, "property", {"name": _xml_text(key),
                                                  "value": _xml_text(value)})
        for case in suite.cases:
            c = ET.SubElement(el, "testcase", {"name": _xml_text(case.name),
                                               "classname": _xml_text(case.classname),
                                               "time": _seconds(case.time)})
            if case.error is not None:
                _outcome(c, "error", case.error)
            elif case.failure is not None:
                _outcome(c, "failure", case.failure)
            elif case.skipped is not None:
                ET.SubElement(c, "skipped", {"message": _xml_text(case.skipped)})
            if case.system_out:
                ET.SubElement(c, "system-out").text = _xml_text(case.system_out)
        if suite.system_out:
            ET.SubElement(el, "system-out").text = _xml_text(suite.system_out)
    return root


def to_xml(suites: Sequence[TestSuite], name: str = "irqlab") -> bytes:
    root = to_element(suites, name)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def write_junit(path: str | os.PathLike[str], suites: Iterable[TestSuite],
                name: str = "irqlab") -> None:
    """Write the JUnit file atomically (a temporary file renamed over `path`), so a CI that
    collects it after a killed job never reads half a file. '-' writes to standard output."""
    data = to_xml(list(suites), name)
    if str(path) == "-":
        import sys

        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
