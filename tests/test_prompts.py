"""The chat prefix of a stage's prompt: the template's BOS text is kept unless the tokenizer adds BOS."""

import pytest

from fslm_edge.config import parse_stack_text
from fslm_edge.prompts import ChatTemplate, stage_prompt

SOURCE = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
STACK = '[stack]\nname = "t"\n\n[[stage]]\nname = "s"\nsystem = "Be brief."\ntemplate = "Q: {input}"\n'


def prompt(adds_bos: bool, overrides=None) -> str:
    stage = parse_stack_text(STACK, "stack.toml", overrides).stages[0]
    return stage_prompt(stage, {"input": "why?"}, ChatTemplate(SOURCE, "<s>", "</s>", adds_bos)).text


def test_bos_text_is_left_to_a_tokenizer_that_adds_bos():
    assert prompt(True) == "[system]Be brief.[user]Q: why?[assistant]"


def test_bos_text_is_kept_where_the_tokenizer_adds_none():
    assert prompt(False) == "<s>[system]Be brief.[user]Q: why?[assistant]"


def test_drop_bos_reproduces_the_format_the_shipped_adapters_were_trained_on():
    assert prompt(False, {"stack.drop_bos": True}) == "[system]Be brief.[user]Q: why?[assistant]"


@pytest.mark.parametrize("drop_bos", [False, True])
def test_smollm2_prompt_starts_with_one_im_start_unless_dropped(smollm2_path, drop_bos):
    """SmolLM2's GGUF sets add_bos_token = false and its template starts with <|im_start|> (= BOS)."""
    from fslm_edge.engine import LoadedModel

    stage = parse_stack_text(STACK, "stack.toml", {"stack.drop_bos": drop_bos}).stages[0]
    model = LoadedModel(smollm2_path, n_ctx=128, n_threads=1)
    try:
        tokens = model.tokenize(stage_prompt(stage, {"input": "why?"}, model.chat_template))
        bos = model.llm.token_bos()
        assert not model.chat_template.tokenizer_adds_bos
        assert tokens.count(bos) == 3 - drop_bos  # system, user and assistant turns each open with it
        assert (tokens[0] == bos) != drop_bos
    finally:
        model.close()


@pytest.mark.parametrize("name", ["qa", "math"])
def test_shipped_stacks_keep_the_format_their_adapters_were_trained_on(name):
    from pathlib import Path

    from fslm_edge.config import load_stack_config

    config = load_stack_config(Path(__file__).parent.parent / "stacks" / f"{name}.toml")
    assert all(stage.drop_bos for stage in config.stages)
