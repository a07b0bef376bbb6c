"""Memory readings the benchmarks share: this process's current and peak RSS from /proc (Linux)."""

from __future__ import annotations

import re
from pathlib import Path


def rss_bytes(field: str = "VmHWM") -> int:
    """VmHWM (peak, the default) or VmRSS (current) of this process, in bytes; includes touched pages of
    memory-mapped files."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it (peaks then accumulate)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
