"""The README matches the code: its commands are the ones CI runs, every error code and every setting
is documented, and the presets table states the real budgets."""

from __future__ import annotations

import re

from pipeline.errors import ERROR_CODES
from pipeline.presets import PRESETS
from pipeline.settings import Settings
from tests.support.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    assert "bash scripts/test" in README
    assert re.search(r"^exec bash scripts/test\s*$", (REPO_ROOT / ".ci" / "run").read_text(), re.M)


def test_every_error_code_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (?:terminal|retried) \|", README, re.M))
    assert documented == set(ERROR_CODES)


def test_every_setting_is_documented() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    assert missing == []


def test_preset_table_states_the_real_budgets() -> None:
    for preset in PRESETS.values():
        row = next(line for line in README.splitlines() if line.startswith(f"| `{preset.name}`"))
        assert f"{preset.mc_resolution}³" in row and f"{preset.max_faces:,}" in row, row
        assert f"{preset.max_glb_bytes // 1_000_000} MB" in row, row
