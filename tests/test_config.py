import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fslm_edge.config import load_stack_config, parse_stack_text
from fslm_edge.errors import FslmError, StackFileError

GOOD = textwrap.dedent('''
    [stack]
    name = "t"
    context_size = 512

    [[stage]]
    name = "recall"
    template = "Q: {input}"
    max_tokens = 8

    [[stage]]
    name = "answer"
    template = "Q: {input}\\nF: {recall}"
    temperature = 0.5
    stop = ["\\n"]
''')


def parse(text, overrides=None):
    return parse_stack_text(text, "stack.toml", overrides)


def error_of(text, overrides=None) -> StackFileError:
    with pytest.raises(StackFileError) as info:
        parse(text, overrides)
    return info.value


def test_good_stack_parses_into_frozen_config():
    config = parse(GOOD)
    assert [s.name for s in config.stages] == ["recall", "answer"]
    assert config.model == "smollm2-135m-instruct" and config.context_size == 512
    answer = config.stage("answer")
    assert answer.fields == ("input", "recall")
    assert answer.sampling.temperature == 0.5 and answer.sampling.stop == ("\n",)
    assert config.stage("recall").sampling.max_tokens == 8
    with pytest.raises(AttributeError):
        answer.name = "x"


def test_unknown_key_names_line_and_suggestion():
    err = error_of(GOOD.replace("temperature = 0.5", "temprature = 0.5"))
    assert err.line == GOOD.splitlines().index("temperature = 0.5") + 1
    assert "temprature" in str(err) and "did you mean 'temperature'" in str(err)
    assert str(err).startswith("stack.toml:")


def test_show_choices_defaults_on_and_must_be_a_bool():
    assert parse(GOOD).show_choices is True
    assert parse(GOOD.replace("[stack]", "[stack]\nshow_choices = false")).show_choices is False
    assert "show_choices" in str(error_of(GOOD.replace("[stack]", "[stack]\nshow_choices = 1")))


def test_calculator_defaults_off_and_must_be_a_bool():
    assert not any(stage.calculator for stage in parse(GOOD).stages)
    assert parse(GOOD.replace("max_tokens = 8", "calculator = true")).stage("recall").calculator is True
    assert parse(GOOD, {"answer.calculator": True}).stage("answer").calculator is True
    err = error_of(GOOD.replace("max_tokens = 8", 'calculator = "yes"'))
    assert "'calculator'" in str(err) and "true or false" in str(err) and err.line is not None


def test_unknown_stack_key_and_table():
    assert "did you mean 'context_size'" in str(error_of(GOOD.replace("context_size", "context_sise")))
    assert "did you mean 'stage'" in str(error_of(GOOD.replace("[[stage]]", "[[stages]]")))


def test_wrong_type_is_named():
    err = error_of(GOOD.replace("max_tokens = 8", 'max_tokens = "eight"'))
    assert "'max_tokens' must be an integer in [1, " in str(err) and err.line is not None
    assert "true or false" in str(error_of(GOOD.replace("max_tokens = 8", "chat = 1")))


def test_reference_to_later_stage_is_an_error():
    text = GOOD.replace('template = "Q: {input}"', 'template = "Q: {input} {answer}"')
    err = error_of(text)
    assert "unknown stage '{answer}'" in str(err) and "defined before" in str(err)


def test_unknown_reference_suggests_closest():
    err = error_of(GOOD.replace("F: {recall}", "F: {recal}"))
    assert "did you mean 'recall'" in str(err)


def test_duplicate_stage_name():
    err = error_of(GOOD.replace('name = "answer"', 'name = "recall"'))
    assert "duplicate stage name" in str(err)


def test_invalid_toml_reports_line():
    err = error_of(GOOD + "\n[[stage]\n")
    assert "invalid TOML" in str(err) and err.line is not None


def test_missing_file(tmp_path):
    with pytest.raises(StackFileError, match="no such stack file"):
        load_stack_config(tmp_path / "nope.toml")


def test_adapter_paths_resolve_against_stack_folder(tmp_path):
    path = tmp_path / "sub" / "s.toml"
    path.parent.mkdir()
    path.write_text(GOOD.replace('max_tokens = 8', 'max_tokens = 8\nadapter = "adapters/r.gguf"'))
    config = load_stack_config(path)
    assert config.stage("recall").adapter == path.parent / "adapters" / "r.gguf"


def test_override_precedence_defaults_toml_cli():
    config = parse(GOOD, {"answer.temperature": 0.9, "*.max_tokens": 3, "stack.context_size": 1024})
    assert config.stage("answer").sampling.temperature == 0.9
    assert all(s.sampling.max_tokens == 3 for s in config.stages)
    assert config.context_size == 1024
    assert config.stage("recall").sampling.top_k == 40  # default survives


def test_bad_overrides_are_named():
    assert "did you mean 'answer'" in str(error_of(GOOD, {"anwser.temperature": 1}))
    assert "temperature" in str(error_of(GOOD, {"answer.temperature": -1}))


def test_train_recipe_is_validated():
    text = GOOD + textwrap.dedent('''
        [stage.train]
        data = [{ file = "x.jsonl", target = "answer", fields = { input = "question" } }]
        rank = 4
    ''')
    recipe = parse(text).stage("answer").train
    assert recipe.rank == 4 and recipe.data[0].field_map == {"input": "question"}
    err = error_of(text.replace("rank = 4", "rnak = 4"))
    assert "did you mean 'rank'" in str(err)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_our_error(text):
    try:
        parse(text)
    except FslmError:
        pass


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _toml(value) -> str:
    import json

    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["name", "template", "model", "max_tokens", "stop", "chat", "train",
                                        "temperature", "top_k", "adapter", "seed", "system", "bogus"]),
                       toml_values, max_size=6))
def test_structured_stage_tables_only_raise_our_error(table):
    body = "\n".join(f"{k} = {_toml(v)}" for k, v in table.items())
    try:
        parse(f'[stack]\nname = "x"\n\n[[stage]]\n{body}\n')
    except FslmError:
        pass


def test_samples_default_one_and_need_sampling():
    assert all(stage.samples == 1 for stage in parse(GOOD).stages)
    assert parse(GOOD, {"answer.samples": 5}).stage("answer").samples == 5
    err = error_of(GOOD, {"recall.samples": 3})  # recall is greedy
    assert "samples = 3 needs temperature > 0" in str(err)
    assert "'samples' must be an integer in [1, 64]" in str(error_of(GOOD, {"answer.samples": 0}))
    err = error_of(GOOD, {"recall.samples": 2, "recall.temperature": 0.7, "answer.samples": 2})
    assert "only one stage may set samples > 1" in str(err) and "'recall'" in str(err)


def test_select_picks_among_samples_only():
    assert parse(GOOD, {"answer.samples": 3}).stage("answer").select == "majority"
    assert parse(GOOD, {"answer.samples": 3, "answer.select": "likelihood"}).stage("answer").select == "likelihood"
    err = error_of(GOOD, {"answer.samples": 3, "answer.select": "likelihod"})
    assert "unknown select 'likelihod'" in str(err) and "did you mean 'likelihood'" in str(err)
    err = error_of(GOOD, {"answer.select": "likelihood"})
    assert "'select' picks among samples; set samples > 1" in str(err)


def test_drop_bos_defaults_to_the_stack_setting():
    assert not any(stage.drop_bos for stage in parse(GOOD).stages)
    config = parse(GOOD, {"stack.drop_bos": True, "answer.drop_bos": False})
    assert [stage.drop_bos for stage in config.stages] == [True, False]
    assert "'drop_bos' must be true or false" in str(error_of(GOOD, {"stack.drop_bos": "yes"}))
