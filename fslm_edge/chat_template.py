"""A model's chat template (``tokenizer.chat_template`` in its GGUF), compiled
and rendered under bounds.

The template is code from the model file: hostile until proven otherwise. It
runs in jinja2's immutable sandbox (no attribute access to internals, no
mutation of lists and dicts) with these limits on top:

- the source is at most ``MAX_SOURCE_CHARS`` (64 KiB; real templates are under
  10 KB), checked before jinja2 sees it: jinja2 needs ~100 bytes of memory per
  source byte to compile;
- a render gets ``RENDER_SECONDS`` of wall time, checked on every line the
  compiled template runs (a per-thread trace function on the template's frames
  only), so nested loops over anything stop;
- no value may grow past the output limit: ``*``, ``+``, ``%`` and ``**`` are
  checked before they run, numbers passed to calls and filters are bounded (a
  width of 10**9 is a 1 GB string), ``range`` is capped, every call's result and
  the template's local strings are measured, and so is the output;
- recursion (a macro calling itself) ends as an error, not a crash.

Every failure is a ModelError that says what went wrong and what to do.
"""

from __future__ import annotations

import contextvars
import functools
import re
import sys
import time
from dataclasses import dataclass

from .errors import ModelError

MAX_SOURCE_CHARS = 64 * 1024
RENDER_SECONDS = 2.0
OUTPUT_BASE_CHARS = 256 * 1024  # plus MESSAGE_FACTOR times the messages' own text
MESSAGE_FACTOR = 4  # a template may repeat each message a few times (tools, reminders)
MAX_RANGE = 10_000  # range() items; no conversation has that many turns
MAX_POWER_BITS = 4096  # the largest integer ** may produce
TEMPLATE_FILENAME = "<template>"  # what jinja2 names code compiled from a string

_HINT = "use chat = false for this stage or fix the GGUF's tokenizer.chat_template"
_WIDTH = re.compile(r"%[-+ #0]*(\d+|\*)")


class TemplateLimit(Exception):
    """A bound was hit while rendering (turned into ModelError with the reason)."""


class TemplateRaised(Exception):
    """The template called ``raise_exception(message)``."""


@dataclass
class _Budget:
    deadline: float
    max_chars: int

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"took longer than {RENDER_SECONDS:g} s to render")

    def check_size(self, value, what: str = "a value") -> None:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > self.max_chars:
            raise TemplateLimit(f"made {what} of {len(value)} items, more than the {self.max_chars} allowed")


_DEFAULT_BUDGET = _Budget(float("inf"), OUTPUT_BASE_CHARS)  # at compile time (jinja2 folds constants)
_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chat_template_budget", default=_DEFAULT_BUDGET)


def _check_number(value, budget: _Budget) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > budget.max_chars:
        raise TemplateLimit(f"used the number {value}, larger than the {budget.max_chars} allowed for sizes")


def _check_binop(operator: str, left, right, budget: _Budget) -> None:
    sized = (str, bytes, list, tuple)
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sized) and isinstance(times, int) and len(seq) * max(times, 0) > budget.max_chars:
                raise TemplateLimit(f"multiplied a sequence of {len(seq)} by {times}, more than the "
                                    f"{budget.max_chars} items allowed")
    elif operator == "+":
        if isinstance(left, sized) and isinstance(right, sized) and len(left) + len(right) > budget.max_chars:
            raise TemplateLimit(f"joined {len(left)} and {len(right)} items, more than the {budget.max_chars} allowed")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                abs(left).bit_length() * right > MAX_POWER_BITS:
            raise TemplateLimit(f"computed {left} ** {right}, a number larger than the {MAX_POWER_BITS} bits allowed")
    elif operator == "%" and isinstance(left, str):
        for match in _WIDTH.finditer(left):
            width = match.group(1)
            if width == "*" or int(width) > budget.max_chars:
                raise TemplateLimit("formatted with a width larger than allowed")


def _check_growth(name: str, base, args: tuple, budget: _Budget) -> None:
    """Before ``join`` or ``replace`` (as a filter or a str method) runs: the
    size it would produce, since a long separator or replacement multiplies."""
    if name == "join" and args and isinstance(args[0], str) and hasattr(base, "__len__"):
        size = len(base) * len(args[0])
    elif name == "replace" and len(args) >= 2 and isinstance(base, str) and all(isinstance(a, str) for a in args[:2]):
        old, new = args[0], args[1]
        size = len(base) + (base.count(old) if old else len(base) + 1) * len(new)
    else:
        return
    if size > budget.max_chars:
        raise TemplateLimit(f"would make a {name} result of {size} characters, more than the "
                            f"{budget.max_chars} allowed")


def _check_call(obj, args: tuple, kwargs: dict, budget: _Budget) -> None:
    for value in (*args, *kwargs.values()):
        _check_number(value, budget)
    wrapped = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner, name = getattr(wrapped, "__self__", None), getattr(wrapped, "__name__", "")
    if isinstance(owner, str):
        if name in ("format", "format_map"):
            for width in re.findall(r"\d+", "".join(re.findall(r"\{[^{}]*\}", owner))):
                _check_number(int(width), budget)
        elif name == "join" and args and hasattr(args[0], "__len__"):
            _check_growth("join", args[0], (owner,), budget)
        else:
            _check_growth(name, owner, args, budget)


def _bounded_filter(name: str, func):
    """A jinja2 filter whose numeric arguments and result are bounded."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) else 0  # the context/environment jinja2 passes first

    @functools.wraps(func)  # keeps jinja2's pass_context/pass_environment marks
    def bounded(*args, **kwargs):
        budget = _BUDGET.get()
        value, rest = args[skip], args[skip + 1:]
        for arg in (*rest, *kwargs.values()):
            _check_number(arg, budget)
        _check_growth(name, value, rest or tuple(kwargs.values()), budget)
        result = func(*args, **kwargs)
        budget.check_size(result, "a filter result")
        return result

    return bounded


def _bounded_range(*args):
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimit(f"asked for range({', '.join(map(str, args))}), more than {MAX_RANGE} items")
    return rng


def _raise_exception(message):
    raise TemplateRaised(str(message))


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """Hugging Face's ``{% generation %}`` marks training targets; it renders its body (as llama-cpp-python)."""

        tags = {"generation"}

        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "%", "**"})

        def call_binop(self, context, operator, left, right):
            budget = _BUDGET.get()
            _check_binop(operator, left, right, budget)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's own signature
            budget = _BUDGET.get()
            budget.check_time()
            _check_call(__obj, args, kwargs, budget)
            result = super().call(__context, __obj, *args, **kwargs)
            budget.check_size(result, "a call result")
            return result

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters = {name: _bounded_filter(name, func) for name, func in env.filters.items()}
    env.globals.update(raise_exception=_raise_exception, range=_bounded_range)
    return env


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
    """(template, None) or (None, why it does not compile); failures are cached too."""
    if len(source) > MAX_SOURCE_CHARS:
        return None, f"is {len(source)} characters long, more than the {MAX_SOURCE_CHARS} fslm-edge accepts"
    try:
        return _environment().from_string(source), None
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted template code is the template's
        return None, f"does not compile: {_describe(exc)}"


def compile_problem(source: str) -> str | None:
    """Why ``source`` cannot be compiled ("is ... long", "does not compile: ..."), or None."""
    return _compiled(source)[1]


def compile_chat_template(source: str):
    """The compiled template; ModelError if it is too big or does not compile."""
    template, problem = _compiled(source)
    if template is None:
        raise ModelError(f"the model's chat template {problem}; {_HINT}")
    return template


def _describe(exc: BaseException) -> str:
    from jinja2 import TemplateSyntaxError

    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.message} (line {exc.lineno})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def render_chat_template(source: str, messages: list[dict], *, bos_token: str, eos_token: str,
                         add_generation_prompt: bool = True) -> str:
    """The conversation rendered by the model's chat template, within the bounds
    above; ModelError for any failure (the message names it and the fix)."""
    template = compile_chat_template(source)
    text_chars = sum(len(str(v)) for m in messages for v in m.values())
    budget = _Budget(time.monotonic() + RENDER_SECONDS, OUTPUT_BASE_CHARS + MESSAGE_FACTOR * text_chars)
    token = _BUDGET.set(budget)
    try:
        return _render(template, budget, messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=bos_token, eos_token=eos_token)
    except TemplateRaised as exc:
        reason = f"raised an error: {str(exc)[:200]}"
    except TemplateLimit as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - undefined names, type errors, recursion: all the template's
        from jinja2 import UndefinedError
        from jinja2.sandbox import SecurityError

        if isinstance(exc, UndefinedError):
            reason = f"uses something undefined ({str(exc)[:200]})"
        elif isinstance(exc, SecurityError):
            reason = f"did something the sandbox forbids ({str(exc)[:200]})"
        else:
            reason = f"failed: {_describe(exc)}"
    finally:
        _BUDGET.reset(token)
    raise ModelError(f"the model's chat template {reason}; {_HINT}")


def _check_local(value, budget: _Budget) -> None:
    from jinja2.utils import Namespace

    values = value._Namespace__attrs.values() if isinstance(value, Namespace) else (value,)
    for item in values:
        if isinstance(item, str) and len(item) > budget.max_chars:
            raise TemplateLimit(f"built a string of {len(item)} characters, more than the {budget.max_chars} allowed")


def _render(template, budget: _Budget, **context) -> str:
    """Render chunk by chunk, measuring the output, with a trace function on
    the template's own frames that checks the clock and the size of its local
    strings on each line it runs."""

    def local_trace(frame, event, arg):
        if event == "line":
            budget.check_time()
            for value in frame.f_locals.values():
                _check_local(value, budget)
        return local_trace

    def global_trace(frame, event, arg):
        return local_trace if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(global_trace)
    try:
        chunks, length = [], 0
        for chunk in template.generate(**context):
            length += len(chunk)
            if length > budget.max_chars:
                raise TemplateLimit(f"rendered more than the {budget.max_chars} characters allowed")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        sys.settrace(previous)
