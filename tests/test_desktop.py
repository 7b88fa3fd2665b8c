"""The desktop app (examples/desktop) in a real X server (Xvfb), driven with
real key presses (xdotool): ask a question and read the answer, then press
Stop on a second one. The screenshot of the answered window goes to the
test's temp folder; with FSLM_EDGE_UPDATE_SCREENSHOT=1 also to docs/desktop.png."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fslm_edge.config import load_stack_config

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "desktop" / "app.py"

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool")),
                                reason="needs Xvfb and xdotool (apt-get install -y xvfb xdotool)")


@pytest.fixture
def display():
    """A private X display; its number is what Xvfb writes to -displayfd."""
    pytest.importorskip("tkinter")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(10)


class Window:
    """The app's process, its stdout transcript, and key presses into it."""

    def __init__(self, display: str, log: Path, *args: str):
        self.env = {**os.environ, "DISPLAY": display}
        self.display = display
        self.log = log
        with open(log, "w") as errors:
            self.proc = subprocess.Popen([sys.executable, str(APP), *args], env=self.env, stdout=subprocess.PIPE,
                                         stderr=errors, text=True, cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in self.proc.stdout],
                         daemon=True).start()
        self.id = self.xdotool("search", "--sync", "--name", "^fslm-edge").split()[0]

    def xdotool(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    def title(self) -> str:
        return self.xdotool("getwindowname", self.id).strip()

    def wait_title(self, ending: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.title().endswith(ending):
            assert time.monotonic() < deadline and self.proc.poll() is None, (self.title(), self.log.read_text())
            time.sleep(0.1)

    def wait_line(self, prefix: str | tuple[str, ...], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert not line.startswith("error:"), line
            if line.startswith(prefix):
                return line

    def type_and_press(self, text: str, key: str = "Return") -> None:
        self.xdotool("windowfocus", "--sync", self.id)
        self.xdotool("type", "--delay", "5", text)
        self.xdotool("key", key)

    def screenshot(self, path: Path) -> None:
        from PIL import ImageGrab

        geometry = dict(line.strip().split("=") for line in self.xdotool(
            "getwindowgeometry", "--shell", self.id).splitlines())
        x, y, w, h = (int(geometry[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
        image = ImageGrab.grab(bbox=(x, y, x + w, y + h), xdisplay=self.display)
        temp = path.with_name(f".{path.name}.tmp")
        image.save(temp, format="PNG")
        os.replace(temp, path)


def test_ask_watch_stages_then_stop(display, tmp_path):
    window = Window(display, tmp_path / "stderr.txt", str(ROOT / "stacks" / "qa.toml"), "--set", "stack.threads=1")
    try:
        window.wait_title("ready")
        window.type_and_press("Why do leaves change colour in autumn?")
        assert window.wait_line("Q: ") == "Q: Why do leaves change colour in autumn?"
        started, answer = [], window.wait_line("[")
        while not answer.startswith("A: "):  # each stage's name as it starts, then the answer
            started.append(answer.strip("[]"))
            answer = window.wait_line(("[", "A: "))
        names = [stage.name for stage in load_stack_config(ROOT / "stacks" / "qa.toml").stages]
        assert len(started) >= 2 and started == sorted(started, key=names.index)
        assert answer != "A: (stopped)" and len(answer) > 3
        window.wait_title("ready")
        time.sleep(0.3)  # the last repaint
        shot = tmp_path / "desktop.png"
        window.screenshot(shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get("FSLM_EDGE_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, ROOT / "docs" / ".desktop.png.tmp")
            os.replace(ROOT / "docs" / ".desktop.png.tmp", ROOT / "docs" / "desktop.png")

        window.type_and_press("Write a long story about a dragon and a lighthouse.")
        window.wait_line("[recall]")
        window.wait_title("thinking")
        window.xdotool("key", "Escape")  # Stop's key; the button calls the same method
        assert window.wait_line("A: ", timeout=30) == "A: (stopped)"
        window.wait_title("stopped", timeout=10)

        window.xdotool("windowfocus", "--sync", window.id)
        window.xdotool("key", "ctrl+q")
        assert window.proc.wait(30) == 0
    finally:
        if window.proc.poll() is None:
            window.proc.kill()
            window.proc.wait()
