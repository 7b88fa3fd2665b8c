"""Hostile stack files and --set values: one StackFileError/InputError, never a
traceback, a hang or an allocation sized by the file."""

import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fslm_edge.config import load_stack_config, parse_override_items, parse_stack_text
from fslm_edge.errors import FslmError, InputError, StackFileError

GOOD = '[stack]\nname = "t"\n\n[[stage]]\nname = "a"\ntemplate = "{input}"\nmax_tokens = 8\n'


def parse(text, overrides=None):
    return parse_stack_text(text, "hostile.toml", overrides)


@pytest.mark.parametrize("nested", ["[" * 600 + "]" * 600, "{a = " * 600 + "1" + "}" * 600])
def test_deeply_nested_values_are_refused(nested):
    with pytest.raises(StackFileError, match="nested more than"):
        parse(GOOD + f"system = {nested}\n")
    with pytest.raises(InputError, match="nested more than"):
        parse_override_items((f"a.system={nested}",))


def test_overrides_on_stages_that_are_not_tables():
    with pytest.raises(StackFileError, match="stage #1 must be a table"):
        parse('stage = [1, 2]\n[stack]\nname = "t"\n', {"*.max_tokens": 3})


@pytest.mark.parametrize("key, value", [
    ("samples", 2147483648), ("max_tokens", 2**40), ("adapter_scale", float("nan")), ("adapter_scale", math.inf),
    ("adapter_scale", 1e308), ("temperature", float("nan")), ("seed", -1), ("top_k", 10**12),
])
def test_out_of_range_stage_values_are_refused_before_anything_is_allocated(key, value):
    with pytest.raises(StackFileError, match=f"'{key}' must be"):
        parse(GOOD, {f"a.{key}": value})


@pytest.mark.parametrize("key, value", [("context_size", 4294967296), ("batch_size", 0), ("threads", 10**6),
                                        ("gpu_layers", -2)])
def test_out_of_range_stack_values_are_refused(key, value):
    with pytest.raises(StackFileError, match=f"'{key}' must be"):
        parse(GOOD, {f"stack.{key}": value})


def test_nul_bytes_and_non_files(tmp_path):
    with pytest.raises(StackFileError, match="NUL"):
        load_stack_config("stacks/qa\x00.toml")
    with pytest.raises(StackFileError, match="a folder"):
        load_stack_config(tmp_path)
    import os

    os.mkfifo(tmp_path / "pipe.toml")
    with pytest.raises(StackFileError, match="not a regular file"):
        load_stack_config(tmp_path / "pipe.toml")  # opened non-blocking: refused, not waited on
    good = tmp_path / "s.toml"
    good.write_text(GOOD + 'json_schema = "pipe.toml"\n')
    with pytest.raises(StackFileError, match="json_schema file .* not a regular file"):
        load_stack_config(good)
    with pytest.raises(InputError, match="cannot be read"):
        parse_override_items(("a.max_tokens=" + "9" * 5000,))
    with pytest.raises(InputError, match="NUL"):
        parse_override_items(("a.system=x\x00y",))


def test_the_cli_answers_one_error_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text(GOOD + "system = " + "[" * 5000 + "]" * 5000 + "\n")
    out = subprocess.run([sys.executable, "-m", "fslm_edge", "info", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_keys = st.sampled_from(["name", "template", "max_tokens", "temperature", "samples", "select", "stop", "choices",
                         "json_schema", "when", "adapter_scale", "seed", "train", "context_size", "bogus"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=_keys, value=_values, where=st.sampled_from(["a", "*", "stack"]))
def test_any_override_value_is_accepted_or_refused_cleanly(key, value, where):
    try:
        parse(GOOD, {f"{where}.{key}": value})
    except FslmError:
        pass
