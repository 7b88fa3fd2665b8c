"""A small desktop window over a stack: type a question, watch every stage's
text stream under its name, read the final answer set apart, press Stop.

    python examples/desktop/app.py                      # stacks/qa.toml
    python examples/desktop/app.py STACK [--set KEY=VALUE ...]

It uses the Python API directly (README.md says why): ``Stack.stream`` runs on
a worker thread, its events reach the Tk thread through a queue polled with
``after``, and Stop calls ``stack.cancel()``. Keys: Return asks, Escape stops,
Ctrl+Q quits. Each question and answer is also printed on stdout.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import tkinter as tk
from pathlib import Path
from tkinter import font as tkfont
from tkinter import ttk

from fslm_edge import FslmError, Stack, StackResult, StageEnd, StageStart, TextDelta
from fslm_edge.config import parse_override_items

DEFAULT_STACK = Path(__file__).resolve().parents[2] / "stacks" / "qa.toml"
POLL_MS = 30  # how often the Tk thread drains the event queue
TITLE = "fslm-edge"


class StagePane:
    """A stage's name over the text it streams."""

    def __init__(self, parent: tk.Widget, name: str, body_font):
        self.frame = ttk.LabelFrame(parent, text=name, padding=4)
        self.text = tk.Text(self.frame, height=3, wrap="word", font=body_font, relief="flat",
                            background="#fafafa", state="disabled")
        self.text.pack(fill="both", expand=True)
        self.stats = ttk.Label(self.frame, text="", foreground="#666")
        self.stats.pack(anchor="e")

    def clear(self) -> None:
        self._edit(lambda: self.text.delete("1.0", "end"))
        self.stats.configure(text="")

    def append(self, text: str) -> None:
        self._edit(lambda: self.text.insert("end", text))
        self.text.see("end")

    def _edit(self, change) -> None:
        self.text.configure(state="normal")
        change()
        self.text.configure(state="disabled")


class App:
    def __init__(self, root: tk.Tk, stack_path: str, overrides: dict):
        self.root = root
        self.events: queue.Queue = queue.Queue()
        self.stack: Stack | None = None
        self.worker: threading.Thread | None = None
        self.panes: dict[str, StagePane] = {}
        self.closing = False
        self._build_window()
        self._set_state("loading", f"loading {stack_path} ...")
        threading.Thread(target=self._load, args=(stack_path, overrides), daemon=True).start()
        root.after(POLL_MS, self._poll)

    # -- window -------------------------------------------------------------------
    def _build_window(self) -> None:
        root = self.root
        root.geometry("820x740")
        base = tkfont.nametofont("TkDefaultFont")
        self.body_font = tkfont.Font(family=base.actual("family"), size=11)
        answer_font = tkfont.Font(family=base.actual("family"), size=14, weight="bold")
        top = ttk.Frame(root, padding=8)
        top.pack(fill="x")
        ttk.Label(top, text="Question:").pack(side="left")
        self.entry = ttk.Entry(top, font=self.body_font)
        self.entry.pack(side="left", fill="x", expand=True, padx=6)
        self.ask_button = ttk.Button(top, text="Ask", command=self.ask, state="disabled")
        self.ask_button.pack(side="left")
        self.stop_button = ttk.Button(top, text="Stop", command=self.stop, state="disabled")
        self.stop_button.pack(side="left", padx=(6, 0))
        self.asked = ttk.Label(root, text="", padding=(8, 0), font=self.body_font, foreground="#333")
        self.asked.pack(fill="x")
        # The status line and the answer are packed first, at the bottom: the stage panes get what is left.
        self.status = ttk.Label(root, text="", padding=(8, 2), foreground="#555")
        self.status.pack(side="bottom", fill="x")
        answer_box = tk.LabelFrame(root, text="Answer", padx=8, pady=6, background="#fff7d6")
        answer_box.pack(side="bottom", fill="x", padx=8, pady=(0, 4))
        self.answer = tk.Label(answer_box, text="", font=answer_font, background="#fff7d6", anchor="w",
                               justify="left", wraplength=760)
        self.answer.pack(fill="x")
        self.stages = ttk.Frame(root, padding=(8, 4))
        self.stages.pack(fill="both", expand=True)
        root.bind("<Return>", lambda _event: self.ask())
        root.bind("<Escape>", lambda _event: self.stop())
        root.bind("<Control-q>", lambda _event: self.quit())
        root.protocol("WM_DELETE_WINDOW", self.quit)
        self.entry.focus_set()

    def _set_state(self, state: str, status: str) -> None:
        """The title says the state (ready, thinking, stopped, ...), the status line the details."""
        name = self.stack.config.name if self.stack else "stack"
        self.root.title(f"{TITLE}: {name} - {state}")
        self.status.configure(text=status)
        running = state in ("thinking", "stopping")
        self.ask_button.configure(state="disabled" if running or self.stack is None else "normal")
        self.stop_button.configure(state="normal" if state == "thinking" else "disabled")

    # -- loading and asking (worker threads put events on the queue) ---------------------
    def _load(self, stack_path: str, overrides: dict) -> None:
        try:
            self.events.put(("loaded", Stack.load(stack_path, overrides or None)))
        except FslmError as exc:
            self.events.put(("load_failed", exc))

    def ask(self) -> None:
        question = self.entry.get().strip()
        if self.stack is None or (self.worker and self.worker.is_alive()) or not question:
            return
        self.entry.delete(0, "end")
        self.asked.configure(text=f"Q: {question}")
        self.answer.configure(text="", foreground="black")
        for pane in self.panes.values():
            pane.clear()
        self.ran: set[str] = set()
        print(f"Q: {question}", flush=True)
        self._set_state("thinking", "running ...")
        self.worker = threading.Thread(target=self._run, args=(question,), daemon=True)
        self.worker.start()

    def _run(self, question: str) -> None:
        try:
            for event in self.stack.stream(question):
                self.events.put(("event", event))
        except FslmError as exc:
            self.events.put(("failed", exc))
        except Exception as exc:  # a bug or llama.cpp failure: show it, keep the window
            self.events.put(("failed", f"{type(exc).__name__}: {exc}"))

    def stop(self) -> None:
        if self.stack is not None and self.worker and self.worker.is_alive():
            self.stack.cancel()  # the engine stops within one token
            self._set_state("stopping", "stopping ...")

    def quit(self) -> None:
        self.closing = True
        if self.stack is not None:
            self.stack.cancel()
        if self.worker and self.worker.is_alive():
            self.root.after(POLL_MS, self.quit)  # let the run let go of the stack first
            return
        if self.stack is not None:
            self.stack.close()
        self.root.destroy()

    # -- the Tk thread: drain the queue ------------------------------------------
    def _poll(self) -> None:
        if self.closing and not self.root.winfo_exists():
            return
        for _ in range(200):  # at most this many per tick, so the window stays responsive
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                break
            self._handle(kind, payload)
        self.root.after(POLL_MS, self._poll)

    def _handle(self, kind: str, payload) -> None:
        if kind == "loaded":
            self.stack = payload
            for stage in payload.config.stages:
                pane = StagePane(self.stages, stage.name, self.body_font)
                pane.frame.pack(fill="both", expand=True, pady=2)
                self.panes[stage.name] = pane
            self._set_state("ready", f"{len(payload.config.stages)} stages: "
                            f"{' -> '.join(s.name for s in payload.config.stages)}")
        elif kind == "load_failed":
            self._set_state("error", f"error: {payload}")
            print(f"error: {payload}", file=sys.stderr, flush=True)
        elif kind == "failed":
            self.answer.configure(text=f"error: {payload}", foreground="#b00020")
            print(f"error: {payload}", flush=True)
            self._set_state("ready", "the question failed; ask another")
        else:
            self._show(payload)

    def _show(self, event) -> None:
        if isinstance(event, StageStart):
            pane = self.panes[event.stage]
            self.ran.add(event.stage)
            if event.sample > 1:
                pane.append(f"\n--- sample {event.sample} ---\n")
            print(f"[{event.stage}]", flush=True)
            self.status.configure(text=f"{event.stage} ...")
        elif isinstance(event, TextDelta):
            self.panes[event.stage].append(event.text)
        elif isinstance(event, StageEnd):
            stats = event.stats
            self.panes[event.stage].stats.configure(
                text=f"{stats.generated_tokens} tokens, {stats.tokens_per_s:.0f} tok/s, {stats.seconds:.1f} s "
                     f"({stats.stop_reason})")
        elif isinstance(event, StackResult):
            for name, pane in self.panes.items():
                if name not in self.ran and not event.cancelled:  # its `when` left it out of this question
                    pane.stats.configure(text="not run for this question")
            if event.cancelled:
                self.answer.configure(text="(stopped)", foreground="#666")
                print("A: (stopped)", flush=True)
                self._set_state("stopped", f"stopped after {event.seconds:.1f} s")
            else:
                self.answer.configure(text=event.answer)
                print(f"A: {event.answer}", flush=True)
                self._set_state("ready", f"answered in {event.seconds:.1f} s")
        elif hasattr(event, "message"):  # a warning: context cut, empty stage output
            self.status.configure(text=f"warning: {event.message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ask a stack questions in a window.")
    parser.add_argument("stack", nargs="?", default=str(DEFAULT_STACK), help="stack file (default: stacks/qa.toml)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a stack setting, as with fslm-edge run")
    args = parser.parse_args(argv)
    try:
        overrides = parse_override_items(args.sets, "--set")
        root = tk.Tk()
    except FslmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except tk.TclError as exc:
        print(f"error: cannot open a window ({exc}); run it on a desktop, or set DISPLAY", file=sys.stderr)
        return 1
    App(root, args.stack, overrides)
    root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
