"""Chat templates from GGUF files are hostile code: each failure or excess is a
ModelError with the fix, never a traceback, a hang or an out-of-memory abort."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm_edge.chat_template import MAX_SOURCE_CHARS, _compiled, render_chat_template
from fslm_edge.errors import ModelError
from fslm_edge.ggufread import GGUFFile
from fslm_edge.prompts import ChatTemplate

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
FIX = "use chat = false for this stage or fix the GGUF's tokenizer.chat_template"


def render(source: str, messages=MESSAGES, **kwargs) -> str:
    return render_chat_template(source, messages, bos_token="<s>", eos_token="</s>", **kwargs)


def refused(source: str, *words: str) -> str:
    with pytest.raises(ModelError) as caught:
        render(source)
    message = str(caught.value)
    assert message.startswith("the model's chat template ") and message.endswith(FIX), message
    for word in words:
        assert word in message, message
    return message


def test_smollm2_template_renders_the_chatml_prompt(smollm2_path):
    source = GGUFFile(smollm2_path).get("tokenizer.chat_template")
    assert render(source) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
                              "<|im_start|>assistant\n")
    assert not render(source, add_generation_prompt=False).endswith("assistant\n")
    chat = ChatTemplate(source, "<|im_start|>", "<|im_end|>", tokenizer_adds_bos=False)
    assert chat.render(MESSAGES) == render(source)


def test_compiled_templates_are_cached():
    source = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    render(source)
    hits = _compiled.cache_info().hits
    assert render(source) == "[system]Be brief.[user]Why?</s>"
    assert _compiled.cache_info().hits == hits + 1


@pytest.mark.parametrize("source, words", [
    ("{% for %}", ["does not compile", "line 1"]),
    ("{{ raise_exception('Only user and assistant roles are supported') }}",
     ["raised an error: Only user and assistant roles are supported"]),
    ("{{ no_such_function() }}", ["uses something undefined", "no_such_function"]),
    ("{{ messages.nope.deeper }}", ["uses something undefined"]),
    ("{{ ''.__class__.__mro__ }}", ["sandbox forbids"]),
    ("{{ messages.append(1) }}", ["sandbox forbids"]),
    ("{{ 1 / 0 }}", ["ZeroDivisionError"]),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", ["nested too deeply"]),
    ("{{" + "(" * 3000 + "1" + ")" * 3000 + "}}", ["does not compile"]),
])
def test_template_errors_are_model_errors(source, words):
    refused(source, *words)


@pytest.mark.parametrize("source", [
    "{{ 'x' * 100000000 }}",
    "{% set n = 100000000 %}{{ 'x' * n }}",
    "{{ messages * 100000000 }}",
    "{{ 'x' | center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '%1000000000s' % 'x' }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ range(10000) | join('x' * 200000) }}",
    "{{ ('x' * 1000) | replace('', 'y' * 1000) }}",
    "{{ 10 ** 100000 }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% for i in range(10000) %}{{ 'y' * 1000 }}{% endfor %}",
])
def test_values_and_output_are_bounded(source):
    refused(source, "allowed")


def test_nested_loops_are_stopped():
    refused("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "range")
    refused("{% set s = 'x' * 9000 %}{% for i in s %}{% for j in s %}{% endfor %}{% endfor %}", "longer than")


def test_a_huge_template_is_refused_before_compiling():
    refused("x" * (50 << 20), f"more than the {MAX_SOURCE_CHARS}")


def test_long_messages_fit_the_output_limit():
    long_text = "word " * 200_000
    out = render("{% for m in messages %}{{ m.content }}{% endfor %}", [{"role": "user", "content": long_text}])
    assert out == long_text


SNIPPETS = ["{{ m.content }}", "{{ m.role|upper }}", "{% if loop.first %}F{% endif %}", "{{ bos_token }}",
            "{{ raise_exception('no') }}", "{{ x() }}", "{{ 'a' * 5 }}", "{{ range(3)|list }}", "{% for %}",
            "{{ messages|length }}", "{{ '%s'|format(1) }}", "{% break %}", "{{ m['content'][:2] }}",
            "{{ 7 // 0 }}", "{{ messages[5].role }}", "{% generation %}g{% endgeneration %}", "{{ m.content.split() }}",
            "{{ (m.content ~ '!')|replace('!', '?') }}", "{{", "}}", "{%", "%}", "{#", "#}"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SNIPPETS), max_size=6), st.booleans())
def test_any_template_renders_or_is_a_model_error(parts, generation_prompt):
    source = "{% for m in messages %}" + "".join(parts) + "{% endfor %}"
    try:
        out = render(source, add_generation_prompt=generation_prompt)
    except ModelError as exc:
        assert str(exc).endswith(FIX)
    else:
        assert isinstance(out, str)
