"""Arithmetic done for a generating stage (``calculator = true``).

Small models set a word problem up better than they multiply: in the math stack's
solve texts more than half of the ``a op b = c`` lines had a wrong ``c``. As in
GSM8K's calculator-annotated sampling (Cobbe et al. 2021), when the stage's text
ends with an arithmetic expression and ``=``, the runtime writes the value and the
model goes on from there.

The expression is read the way GSM8K solutions write it: numbers (``$1,000``,
``.5``), + - * / (also x, ×, ÷ and the minus and en-dash signs), parentheses, and
unit words after a number, which are skipped (``5 snakes/jaguar * 6 jaguars``).
Percentages count as hundredths (``15% * $1000``); a sum or difference of
percentages stays one (``100% - 40%`` is ``60%``). Nothing is written when the
expression is only the end of something larger it cannot read (``8 x 1 1/2``,
``S + 143``, ``2 * 2S``), or when the unit words are not plainly units. The value
is computed through a whitelist of AST nodes, never ``eval``.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

# Part of every cache key of a stage that uses the calculator: its texts change with the rules
# (1: numbers and operators only; 2: unit words, percentages, leading-dot decimals, minus signs).
VERSION = 2
_TAIL_CHARS = 160  # an expression longer than this is not looked for
_MAX_UNIT_WORDS = 3  # "3 green hard hats"
# Words that make a phrase, not a unit: "1/3 of Solomon", "11/20 we get X".
_NOT_UNITS = frozenset("of is are was were we get gives so then that which to and be by for from at it its".split())
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_ITEM = re.compile(
    r"(?P<num>\$?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)(?![\w.])%?)"  # a number, not glued to a letter
    r"|(?P<unit>/\s*[A-Za-z]+|[A-Za-z]+(?:['’][a-z]+)?)"            # a word, or a per-unit "/word"
    r"|(?P<op>[-+*/×÷−–])"
    r"|(?P<paren>[()])"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)",
    re.S,
)
_TIMES = re.compile(r"(?<=[\d%)])\s*x\s*(?=[\d$(.])|(?<=\s)x(?=\s)")  # "2x3", "5 x 3", "$6/box x 8 boxes"
_OPERATOR_TEXT = {"x": "*", "×": "*", "÷": "/", "−": "-", "–": "-"}


def evaluate(expression: str) -> Fraction | None:
    """The exact value of a plain arithmetic expression, or None if it is not one
    (or divides by zero)."""
    text = expression.replace("$", "").replace("×", "*").replace("÷", "/").replace("x", "*")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text).replace("−", "-").replace("–", "-")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _value(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    raise ValueError("not plain arithmetic")


def format_value(value: Fraction) -> str:
    """Whole numbers as integers; others to at most two decimals (money, the usual case)."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _items(text: str) -> list[tuple[str, str]]:
    """(kind, text) for each number, operator, parenthesis, word and other character."""
    return [(m.lastgroup, m.group()) for m in _ITEM.finditer(text) if m.lastgroup != "space"]


def _trailing_expression(items: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool] | None:
    """The arithmetic at the end of ``items`` with unit words dropped, and whether
    it has percentages; None if the end is not an expression this can read."""
    kept: list[tuple[str, str]] = []  # backwards
    i = len(items)
    while i > 0:
        kind = items[i - 1][0]
        if kind in ("num", "op", "paren"):
            kept.append(items[i - 1])
            i -= 1
            continue
        if kind != "unit":
            break
        j = i
        while j > 0 and items[j - 1][0] == "unit":
            j -= 1
        words = [text.lstrip("/ ").lower() for _, text in items[j:i]]
        if not kept and any(w in _NOT_UNITS or (len(w) == 1 and w != "a") for w in words):
            return None  # "1/3 of Solomon =", "11/20 we get X =": not a value to compute
        # Words are a number's units if they come right after it and before an operator, ")" or "=".
        before_operator = not kept or kept[-1][0] == "op" or kept[-1] == ("paren", ")")
        if not before_operator or j == 0 or items[j - 1][0] != "num":
            if (j >= 2 and items[j - 1][0] == "num" and _OPERATOR_TEXT.get(items[j - 2][1], items[j - 2][1]) in "+-"
                    and i - j <= _MAX_UNIT_WORDS):
                return None  # the words interrupt a longer expression ("20 + 10 more to the 29 + 4")
            break  # the words end the sentence before the expression
        if i - j > _MAX_UNIT_WORDS:
            return None  # a phrase, not a unit: what the number means is not clear
        i = j
    kept.reverse()
    if not kept or kept[0][0] == "op" or not any(kind == "op" for kind, _ in kept):
        return None  # no operator, or the left operand is out of reach ("S + 143")
    return kept, any(text.endswith("%") for kind, text in kept if kind == "num")


def _python(kept: list[tuple[str, str]], percent: str = "{}%") -> str:
    """``kept`` as Python arithmetic; a percentage ``p%`` is written as ``percent.format(p)``."""
    return " ".join(percent.format(t[:-1]) if t.endswith("%") else _OPERATOR_TEXT.get(t, t) for _, t in kept)


def _percent_expression(kept: list[tuple[str, str]]) -> tuple[str, bool] | None:
    """Python arithmetic for ``kept`` and whether its value is a percentage."""
    if len(kept) > 2 and kept[-1] == ("num", "100%") and _python(kept[-2:-1]) == "*":
        return f"({_python(kept[:-2])}) * 100", True  # "15 / 90 * 100%"
    numbers = [text for kind, text in kept if kind == "num"]
    if all(n.endswith("%") for n in numbers) and {_python([k]) for k in kept if k[0] == "op"} <= {"+", "-"}:
        return _python(kept, "{}"), True
    if sum(n.endswith("%") for n in numbers) > 1:
        return None  # a product of percentages: is 60% * 50% 30% or 0.3? not guessed at
    return _python(kept, "({}/100)"), False


def completion(text: str) -> str | None:
    """What to write after ``text`` if it ends with ``<expression> =``; None otherwise."""
    stripped = text.rstrip(" $")
    if not stripped.endswith("="):
        return None  # the usual token: nothing to parse
    line = stripped[:-1][-_TAIL_CHARS:].split("\n")[-1]
    line = _TIMES.sub(" * ", line)
    found = _trailing_expression(_items(line))
    if found is None:
        return None
    kept, has_percent = found
    if has_percent:
        converted = _percent_expression(kept)
        if converted is None or (converted[1] and text.endswith("$")):
            return None  # (a percentage after "$" would read "$60%")
        expression, is_percent = converted
    else:
        expression, is_percent = _python(kept), False
    value = evaluate(expression)
    if value is None:
        return None
    written = format_value(value) + ("%" if is_percent else "")
    return written if text.endswith((" ", "$")) else " " + written


class Calculator:
    """Follows a stage's output text and says when to write a computed value."""

    def __init__(self):
        self._text = ""

    def feed(self, piece: str) -> str | None:
        """Add generated text; return the text to write next, if the output now
        ends with an expression and '='."""
        self._text = (self._text + piece)[-_TAIL_CHARS:]
        return completion(self._text)

    def wrote(self, text: str) -> None:
        """Record text the runtime wrote itself (the value), so it is not computed again."""
        self._text = (self._text + text)[-_TAIL_CHARS:]
