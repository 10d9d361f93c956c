"""A lab comparison as JUnit XML, the format CI systems (Jenkins, GitLab, GitHub) read.

One test case per (device, job, metric) of the compared run:

- regressed, new failure: ``<failure>`` (the cases that make `lab compare` exit 1);
- failing in the baseline too: ``<error>`` (the job could not be measured; not new);
- no or too short a baseline: ``<skipped>``;
- unchanged, improved, fixed, not significant: passed (the figures in ``<system-out>``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from edgeshrink.util import atomic_path


def _case_name(finding: Any) -> str:
    return "status" if finding.metric == "status" else finding.metric


def render_junit(comparison: Any) -> str:
    """JUnit XML for a :class:`~edgeshrink.lab.regress.Comparison`."""
    run = comparison.run
    findings = list(comparison.findings)
    failures = sum(1 for f in findings if f.regression)
    errors = sum(1 for f in findings if f.verdict == "failing")
    skipped = sum(1 for f in findings if f.verdict in ("no-baseline", "short baseline"))
    suites = ET.Element("testsuites", name="edgeshrink lab", tests=str(len(findings)),
                        failures=str(failures), errors=str(errors), skipped=str(skipped))  # fmt: skip
    suite = ET.SubElement(
        suites, "testsuite", name=f"lab.{run.suite_name}.run-{run.id}", tests=str(len(findings)),
        failures=str(failures), errors=str(errors), skipped=str(skipped),
        timestamp=run.started_at[:19], hostname=run.host,
    )  # fmt: skip
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("run", str(run.id)),
        ("baseline", comparison.baseline_spec),
        ("baseline_runs", ",".join(map(str, comparison.baseline_runs))),
        ("threshold", f"{comparison.policy.threshold:g}"),
        ("alpha", f"{comparison.policy.alpha:g}"),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for f in findings:
        case = ET.SubElement(suite, "testcase", classname=f"lab.{f.device}.{f.job}",
                             name=_case_name(f), time="0")  # fmt: skip
        detail = f.message
        if f.changed:
            detail += "\nwhat changed: " + "; ".join(c.describe() for c in f.changed)
        if f.regression:
            ET.SubElement(
                case, "failure", type=f.verdict, message=f"{f.verdict}: {f.message}"
            ).text = detail
        elif f.verdict == "failing":
            ET.SubElement(case, "error", type="failing", message=f.message).text = detail
        elif f.verdict in ("no-baseline", "short baseline"):
            ET.SubElement(case, "skipped", message=f.message)
        else:
            ET.SubElement(case, "system-out").text = f"{f.verdict}: {detail}"
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def write_junit(comparison: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render_junit(comparison), encoding="utf-8")
    return path
