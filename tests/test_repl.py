"""The REPL driven through a real pseudo-terminal: Ctrl-C cancels, Ctrl-D exits."""

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    def __init__(self, args, env):
        self.master, slave = pty.openpty()

        def own_terminal():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # A test run started in the background of a shell without job control ignores SIGINT,
            # and a child would inherit that; a user's terminal delivers it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                                     preexec_fn=own_terminal)
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 60, times: int = 1) -> str:
        """Wait until ``text`` has been shown ``times`` times; keep only what came after."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            plain = ANSI.sub(b"", self.seen).decode("utf-8", "replace")
            if " ".join(plain.split()).count(" ".join(text.split())) >= times:  # the terminal may wrap long lines
                last = text.split()[-1]
                self.seen = plain[plain.rfind(last) + len(last):].encode()  # keep what came after the match
                return plain
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        raise AssertionError(f"did not see {text!r}; screen: {ANSI.sub(b'', self.seen)[-800:]!r}")

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def wait_for_line_editor(self, timeout: float = 60) -> None:
        """Wait until readline has the terminal in raw mode, reading keys.

        A control key typed while the terminal is still in canonical mode is turned by the line
        discipline into something else (Ctrl-D into an end-of-file marker that readline then reads
        as a NUL byte), so a test must not send one before this.  The pty master reports the
        slave's termios.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not termios.tcgetattr(self.master)[3] & termios.ICANON:
                return
            time.sleep(0.05)
        raise AssertionError("readline never took the terminal")


def test_repl_session(tmp_path):
    env = {**os.environ, "FSLM_EDGE_HISTORY": str(tmp_path / "history"), "COLUMNS": "100", "TERM": "xterm"}
    exe = str(Path(sys.executable).with_name("fslm-edge"))
    stack = tmp_path / "count.toml"  # a first stage that surely runs for many seconds, so Ctrl-C lands mid-stage
    stack.write_text('[stack]\nname = "count"\ncontext_size = 2048\n\n'
                     '[[stage]]\nname = "recall"\ntemplate = "Count to 2000: 1, 2, 3,"\nchat = false\n'
                     'max_tokens = 1500\nrepeat_penalty = 1.0\n\n'
                     '[[stage]]\nname = "answer"\ntemplate = "{input}"\nmax_tokens = 8\n')
    term = Terminal([exe, "repl", str(stack)], env)
    try:
        term.expect(">>> ")
        term.send("/help\n")
        term.expect("/stages on|off")
        term.send("/set recall.max_tokens 1400\n")
        term.expect("recall.max_tokens = 1400")
        term.send("go\n")
        term.expect("recall")
        time.sleep(1.0)
        term.send("\x03")  # Ctrl-C while generating
        term.expect("cancelled")
        term.expect(">>> ")
        term.send("/set recall.max_tokens 3\n")
        term.expect("recall.max_tokens = 3")
        term.send('"""\nWhat is\nwater?\n"""\n')  # a multi-line block
        term.expect("answer")
        term.expect(">>> ")
        term.send("/stats\n")
        term.expect("last turn")
        term.send("/set temprature 1\n")
        term.expect("unknown stage key 'temprature'")
        term.send("/stages off\n")
        term.expect("stages off", times=2)  # the typed line's echo, then the command's answer
        term.expect(">>> ")
        term.wait_for_line_editor()  # readline owns the terminal again: a control key now reaches it
        term.send("\x04")  # Ctrl-D exits
        assert term.proc.wait(timeout=30) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert (tmp_path / "history").exists()
