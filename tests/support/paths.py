"""Where the read-only team fixtures live (`../shared` beside the checkout, or $SHOP3D_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = Path(os.environ.get("SHOP3D_SHARED", REPO_ROOT.parent / "shared"))
TINY_FIXTURE_DIR = SHARED_DIR / "triposr" / "fixtures" / "tiny"
RELEASED_DIR = SHARED_DIR / "triposr" / "released"
