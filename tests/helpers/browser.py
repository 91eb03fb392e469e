"""Headless Chromium screenshots for tests that render HTML (the ``mipo report`` page).

Chromium comes from Debian's package (``apt-get install -y chromium``, binary
``/usr/bin/chromium``); tests skip when it is absent. Every flag that would reach the network
or a user profile is off, so a screenshot works offline and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium"


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(
    html_file: Path,
    png_file: Path,
    *,
    width: int = 1280,
    height: int = 2000,
    timeout: float = 120.0,
) -> Path:
    """Render ``html_file`` headless at ``width`` x ``height`` pixels into ``png_file``.

    Raises:
        FileNotFoundError: no Chromium on PATH.
        RuntimeError: Chromium exited without writing the screenshot (its output attached).
    """
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError(f"no Chromium found; {INSTALL_HINT}")
    png_file = Path(png_file).resolve()
    png_file.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # tests may run as root in a container
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png_file}",
            Path(html_file).resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if not png_file.is_file():
        raise RuntimeError(
            f"chromium exited with {result.returncode} and wrote no screenshot:\n"
            f"{result.stderr[-2000:]}"
        )
    return png_file


def image_stats(png_file: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not near-white) of an image.

    A blank page is one colour and 0% ink; a rendered report has hundreds of colours (text
    antialiasing, figures) and a visible share of non-white pixels.
    """
    from PIL import Image

    with Image.open(png_file) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 24) or []
        pixels = rgb.width * rgb.height
        near_white = sum(
            count for count, (red, green, blue) in colours if min(red, green, blue) >= 245
        )
    return len(colours), 1.0 - near_white / pixels
