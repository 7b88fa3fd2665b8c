import pytest
from hypothesis import given
from hypothesis import strategies as st

from fslm_edge.templates import TemplateSyntaxError, render_template, template_fields


def test_fields_in_order_of_first_use():
    assert template_fields("{recall} then {input} and {recall}") == ("recall", "input")


def test_render_substitutes_and_unescapes_braces():
    assert render_template("Q: {input} {{literal}}", {"input": "why?"}) == "Q: why? {literal}"


def test_values_are_never_interpreted():
    assert render_template("{input}", {"input": "{recall} {0} {{x}}"}) == "{recall} {0} {{x}}"


@pytest.mark.parametrize("bad", ["{0}", "{a.b}", "{input!r}", "open { brace", "close } brace", "{}"])
def test_non_plain_fields_are_errors(bad):
    with pytest.raises(TemplateSyntaxError):
        template_fields(bad)


@given(st.text())
def test_escaped_text_round_trips(text):
    escaped = text.replace("{", "{{").replace("}", "}}")
    assert render_template(escaped, {}) == text
