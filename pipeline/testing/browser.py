"""Headless Chromium for the console's browser tests: Debian's `chromium` driven by Playwright.

Playwright's own browser builds are never downloaded (`playwright install` is not run anywhere): the
system Chromium is launched through `executable_path`. WebGL runs on SwiftShader, Chromium's CPU
renderer, so `<model-viewer>` draws in a container without a GPU or a display.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ENV = "SHOP3D_CHROMIUM"
_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

# WebGL on ANGLE over SwiftShader (CPU) even where a GPU exists, so renders match across machines.
# Chromium is retiring WebGL's automatic software fallback (156 still has it): --enable-unsafe-swiftshader
# keeps it, or model-viewer never loads. Playwright 1.65 already passes that, --disable-dev-shm-usage (a
# container's small /dev/shm crashes renderers) and --no-sandbox; stated here so no new default drops them.
WEBGL_ARGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader")
CONTAINER_ARGS = ("--disable-dev-shm-usage",)


class ChromiumNotFound(RuntimeError):
    """No system Chromium: install Debian's `chromium` (scripts/setup does) or set SHOP3D_CHROMIUM."""


def chromium_path() -> str:
    """The system Chromium to launch: $SHOP3D_CHROMIUM if set, else /usr/bin/chromium or one on PATH."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise ChromiumNotFound(f"{CHROMIUM_ENV}={configured!r} is not an executable file")
        return configured
    for candidate in _CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise ChromiumNotFound(f"no Chromium found ({', '.join(_CANDIDATES)}): `apt-get install chromium` "
                           f"(scripts/setup does) or set {CHROMIUM_ENV}")


def launch_args() -> list[str]:
    """Chromium's command-line switches for headless WebGL in a container (no sandbox as root)."""
    args = [*WEBGL_ARGS, *CONTAINER_ARGS]
    if os.geteuid() == 0:   # Chromium's sandbox refuses to start as root
        args.append("--no-sandbox")
    return args


@contextmanager
def open_browser() -> Iterator[Browser]:
    """A headless system Chromium under Playwright's sync API; closed (with Playwright) on exit."""
    from playwright.sync_api import sync_playwright  # the `test` extra; fail on use, not on import

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=launch_args())
        try:
            yield browser
        finally:
            browser.close()
