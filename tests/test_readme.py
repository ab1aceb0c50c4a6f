"""README's two commands stay true: CI runs the same install and test commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks():
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_a_main_job_and_a_test_command_that_ci_runs():
    blocks = [b.strip() for b in _blocks()]
    main_job, tests = blocks[0], blocks[1]
    assert "harness eval" in main_job and "synth" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    # The install steps and the test command of README's test line appear verbatim in .ci/run.
    steps = [s.strip() for s in tests.split("&&")][2:]  # after creating/activating the venv
    for step in steps[:-1]:
        assert step in ci, step
    assert steps[-1] in ci
