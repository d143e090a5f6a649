"""The committed tracker bundle is exactly what the pinned build makes from the source."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "static"
SOURCE = STATIC / "tracker.js"
BUNDLE = STATIC / "tracker.min.js"
BUILD = STATIC / "build.sh"

#: The budget a shop pays on every page view; /s.js is served gzipped. 3,000 until Google
#: Consent Mode (issue 21) cost ~150 B that trims could not win back (docs/tracker.md).
GZIP_BUDGET = 3150


def test_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    # Not a skip: a silently skipped check is how a stale bundle gets shipped.
    if shutil.which("npx") is None or shutil.which("node") is None:
        pytest.fail(
            "node/npx not found on PATH: install Node.js (npm) to rebuild static/tracker.min.js"
        )
    out = tmp_path / "tracker.min.js"
    proc = subprocess.run(
        ["sh", str(BUILD), str(out)], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, f"static/build.sh failed:\n{proc.stdout}\n{proc.stderr}"
    assert out.read_bytes() == BUNDLE.read_bytes(), (
        "static/tracker.min.js is stale: run static/build.sh and commit the result"
    )


def test_bundle_gzip_size_within_budget() -> None:
    size = len(gzip.compress(BUNDLE.read_bytes(), compresslevel=9))
    assert size <= GZIP_BUDGET, f"tracker.min.js is {size} bytes gzipped (budget {GZIP_BUDGET})"


@pytest.mark.parametrize("path", [SOURCE, BUNDLE], ids=["source", "bundle"])
def test_no_dynamic_code(path: Path) -> None:
    # Shops run strict CSPs without 'unsafe-eval'; the tracker must work under them.
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\beval\s*\(", text)
    assert "new Function" not in text
