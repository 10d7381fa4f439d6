"""The ``actorlearner view`` page in a real browser: Debian's headless Chromium (``make test-browser``).

The page of a real run is rendered to a screenshot, which must not be blank and must show the
trained-token colour, and Chromium must log no console message for it. A page with a script that
logs an error proves the console check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from actorlearner.view import write_view
from tests.conftest import small_config

TRAINED_RGB = (0xC9, 0xF2, 0xC9)
"""The background of trained tokens in the page's CSS (``.trained``)."""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium: `make test-browser` installs Debian's chromium package")
    return found


def _render(page: Path, shot: Path) -> list[str]:
    """Screenshots ``page``; returns Chromium's console lines."""
    done = subprocess.run(
        [
            _chromium(),
            *("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"),
            *("--enable-logging=stderr", "--log-level=0", "--window-size=1200,900"),
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); missing();</script>")
    console = _render(page, tmp_path / "bad.png")
    assert any("boom" in line for line in console) and any("Uncaught" in line for line in console)


def test_the_view_of_a_real_run_renders_with_no_console_message(tmp_path: Path) -> None:
    algo = small_config(tmp_path, synchronous=True).reporting(log_samples=2).build()
    try:
        algo.pretrain()
        for _ in range(2):
            algo.train()
    finally:
        algo.stop()
    page = write_view(algo.run_dir)
    shot = tmp_path / "view.png"
    assert _render(page, shot) == []
    pixels = (image.imread(shot)[..., :3] * 255).round().astype(int)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    drawn = np.abs(pixels - background).sum(axis=-1) > 30
    assert drawn.mean() > 0.02, "the screenshot is blank"
    trained = np.abs(pixels - np.array(TRAINED_RGB)).sum(axis=-1) <= 6
    assert trained.sum() > 200, "no trained tokens are shown"
