"""``fslm-edge repl``: an interactive prompt over a loaded stack.

Generation runs on a worker thread; the main thread renders events and turns
Ctrl-C into ``Stack.cancel()``, so an interrupted answer returns to the prompt.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from rich.console import Console

from .config import parse_override_items
from .errors import FslmError
from .events import StackResult
from .models import cache_dir
from .stack import Stack
from .view import render_events, stats_table

HELP = """commands:
  /help                 this help
  /stages on|off        show or hide each stage's text (the answer is always shown)
  /set KEY VALUE        change a setting for this session: KEY is a stage key for every stage
                        (temperature, max_tokens, top_p, top_k, seed, ...) or STAGE.KEY
  /stats                per-stage timings of the last turn
  /reset                forget /set changes and cached state
  /quit                 leave (or Ctrl-D)
input: end a line with \\ to continue it; a line with only \"\"\" starts and ends a multi-line block.
Ctrl-C stops the answer being generated."""

_DONE = object()


class Repl:
    def __init__(self, stack_file: str, overrides: dict | None = None, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.file_overrides = dict(overrides or {})
        self.session_overrides: dict[str, object] = {}
        self.stack = Stack.load(stack_file, self.file_overrides)
        self.show_stages = True
        self.last: StackResult | None = None

    # -- input --------------------------------------------------------------
    def _setup_history(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - not on every platform
            return
        self._history = Path(os.environ.get("FSLM_EDGE_HISTORY", cache_dir() / "repl_history"))
        try:
            self._history.parent.mkdir(parents=True, exist_ok=True)
            if self._history.exists():
                readline.read_history_file(self._history)
        except OSError:
            pass
        readline.set_history_length(1000)

    def _save_history(self) -> None:
        try:
            import readline

            readline.write_history_file(self._history)
        except (ImportError, OSError, AttributeError):
            pass

    def read_input(self) -> str:
        line = input(">>> ")
        if line.strip() == '"""':
            lines = []
            while (more := input("... ")).strip() != '"""':
                lines.append(more)
            return "\n".join(lines)
        while line.endswith("\\"):
            line = line[:-1] + "\n" + input("... ")
        return line

    # -- loop ---------------------------------------------------------------
    def loop(self) -> None:
        self._setup_history()
        names = " -> ".join(s.name for s in self.stack.config.stages)
        self.console.print(f"[bold]{self.stack.config.name}[/] ({names}). /help for commands, Ctrl-D to quit.")
        try:
            while True:
                try:
                    text = self.read_input()
                except EOFError:
                    self.console.print()
                    break
                except KeyboardInterrupt:
                    self.console.print("^C")
                    continue
                if not text.strip():
                    continue
                if text.startswith("/"):
                    if not self.command(text.strip()):
                        break
                    continue
                self.ask(text)
        finally:
            self._save_history()
            self.stack.close()

    def ask(self, text: str) -> None:
        events: queue.Queue = queue.Queue()

        def work():
            try:
                for event in self.stack.stream(text):
                    events.put(event)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                events.put(exc)
            finally:
                events.put(_DONE)

        worker = threading.Thread(target=work, name="fslm-edge-generate", daemon=True)
        worker.start()
        try:
            self.last = render_events(self._drain(events), self.console, show_stages=self.show_stages) or self.last
        except KeyboardInterrupt:
            self.stack.cancel()
            for _ in self._drain(events):
                pass
            self.console.print("\n[yellow]cancelled[/]")
        except FslmError as exc:
            self.console.print(f"[red]error:[/] {exc}")
        worker.join()

    def _drain(self, events: queue.Queue):
        while True:
            try:
                item = events.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- commands -----------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False means leave the REPL."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.console.print(HELP, markup=False)
        elif name == "/stages" and rest in ("on", "off"):
            self.show_stages = rest == "on"
            self.console.print(f"stages {rest}")
        elif name == "/set" and len(rest.split(None, 1)) == 2:
            self._set(*rest.split(None, 1))
        elif name == "/stats":
            if self.last is None:
                self.console.print("no turn yet")
            else:
                self.console.print(stats_table(self.last))
        elif name == "/reset":
            self.session_overrides.clear()
            self._apply()
            for model in self.stack.models:
                model.reset()
            self.last = None
            self.console.print("settings reset to the stack file")
        else:
            self.console.print(f"unknown or incomplete command {line!r}; /help lists them")
        return True

    def _set(self, key: str, value: str) -> None:
        dotted = key if "." in key else f"*.{key}"
        try:
            update = parse_override_items((f"{dotted}={value}",), "/set")
            candidate = {**self.session_overrides, **update}
            self._apply(candidate)
        except FslmError as exc:
            self.console.print(f"[red]error:[/] {exc}")
            return
        self.session_overrides = candidate
        self.console.print(f"{dotted} = {update[dotted]!r}")

    def _apply(self, session: dict | None = None) -> None:
        session = self.session_overrides if session is None else session
        self.stack.reconfigure({**self.file_overrides, **session})
