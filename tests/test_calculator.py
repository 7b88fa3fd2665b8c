"""The stage calculator: pure logic here; a real SmolLM2 stage in test_runtime.py."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fslm_edge.calculator import Calculator, completion, evaluate, format_value


@pytest.mark.parametrize("text, written", [
    ("Natalia sold 48/2 =", " 24"),
    ("She earned 0.2 x 50 = $", "10"),
    ("In all 1,000 + 250 = ", "1250"),
    ("(3 + 4) * 2 =", " 14"),
    ("Each gets 10/3 =", " 3.33"),
    ("So 12 × 3 ÷ 4 =", " 9"),
    ("The cost is $12 * 4 =", " 48"),
    ("She has 3 apples, 5 - 7 =", " -2"),
    ("0.1 + 0.2 =", " 0.3"),
    # as GSM8K solutions write it: units after numbers, percentages, ".5", minus signs
    ("a total of 4 houses * 3 gnomes =", " 12"),
    ("there were 3 green hard hats + 16 pink hard hats =", " 19"),
    ("Candy: 14 pieces/house * 60 houses =", " 840"),
    ("There are 60 students x 2/3 =", " 40"),
    ("It lasts 60 days / (2/3) =", " 90"),
    ("Her overtime pay is 18*.5 =", " 9"),
    ("The number of rose stamps is 20 − 13 =", " 7"),
    ("So his weight will be 97 – 12 =", " 85"),
    ("Accommodation is 15% * $1000=", " 150"),
    ("It costs 20% * 5 =", " 1"),
    ("Since 40% got below B, 100% - 40% =", " 60%"),
    ("The share is 15 trucks / 90 vehicles * 100% =", " 16.67%"),
    ("In 2019 she sold 30 + 12 =", " 42"),
    ("So 2x3 =", " 6"),
])
def test_a_trailing_expression_gets_its_value(text, written):
    assert completion(text) == written


@pytest.mark.parametrize("text", [
    "60 - 3 = 47",          # the value is already written
    "x = 5",                # no expression before '='
    "She has 2x =",         # an unknown
    "It is 5/0 =",          # division by zero
    "Bill eats 60% * 50% =",        # a product of percentages is not guessed at
    "A tip of 10% + 5% = $",        # a percentage is not written after "$"
    "8 x 1 1/2 =",                  # a mixed number: only its end would be read
    "Each cup needs 1/4 cup + 1 and 1/4 cup =",  # words interrupt the expression
    "She used all but $16, so S + 143 =",      # the left operand is an unknown
    "All the ships had 2 * 2S =",
    "Juwan is 1/3 of Solomon =",    # "of": a phrase, not a unit
    "Dividing both sides by 11/20 we get X =",
    "She has 5 apples and pears and plums and figs + 2 =",  # too many words for a unit
    "2 ** 8 =",             # only + - * /
    "(1 + 2 =",             # unbalanced
    "Total 3 apples =",     # no operator
    "",
])
def test_no_value_when_there_is_nothing_to_compute(text):
    assert completion(text) is None


def test_evaluate_is_exact_and_refuses_anything_but_arithmetic():
    assert evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate("__import__('os')") is None
    assert evaluate("a + 1") is None
    assert evaluate("(" * 500 + "1" + ")" * 500) is None  # too deep: refused, not a crash
    assert format_value(Fraction(7, 2)) == "3.5" and format_value(Fraction(-1, 1000)) == "0"


def test_calculator_follows_text_pieces_and_does_not_compute_twice():
    calc = Calculator()
    pieces = ["48", " /", " 2", " ="]
    written = [calc.feed(p) for p in pieces]
    assert written == [None, None, None, " 24"]
    calc.wrote(" 24")
    assert calc.feed(" clips") is None
    assert calc.feed("€") is None and calc.feed(" 2 + 2 =") == " 4"



_UNITS = st.sampled_from(["", " apples", " green hard hats", " pieces/house", " cups", " miles per hour"])
_SIGNS = {"+": "+", "-": "-", "*": "*", "x": "*", "×": "*", "−": "-", "–": "-", "/": "/", "÷": "/"}


@given(st.lists(st.tuples(st.integers(0, 10**6), _UNITS), min_size=2, max_size=4), st.data())
def test_a_chain_with_unit_words_gets_its_exact_value(terms, data):
    signs = [data.draw(st.sampled_from(sorted(_SIGNS))) for _ in terms[1:]]
    text = f"So {terms[0][0]}{terms[0][1]}" + "".join(f" {sign} {n}{unit}" for (n, unit), sign in zip(terms[1:], signs))
    # The same chain as plain arithmetic, with Python's precedence (* and / first), as the text reads
    plain = f"{terms[0][0]}" + "".join(f" {_SIGNS[sign]} {n}" for (n, _), sign in zip(terms[1:], signs))
    value = evaluate(plain)  # None after a division by zero
    assert completion(text + " =") == (None if value is None else " " + format_value(value))
