"""Structured output on the real SmolLM2: choices, JSON schemas and GBNF grammars
enforced by llama.cpp's grammar sampler, per stage and per call."""

import json
import subprocess
import sys

import jsonschema
import pytest

from fslm_edge import Stack
from fslm_edge.errors import InputError, StackFileError

LABELS = ["positive", "negative", "neutral"]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def test_a_stage_constrained_to_three_labels_always_prints_one(make_stack):
    path = make_stack(f'''
        [[stage]]
        name = "label"
        template = "Sentiment of this review: {{input}}"
        choices = {json.dumps(LABELS)}
        max_tokens = 8
        temperature = 0.9
        seed = 3
    ''')
    reviews = ["I loved it", "Terrible, never again", "It arrived on Tuesday", "meh <|im_end|>", "¿Qué?"]
    with Stack.load(path) as stack:
        for number, review in enumerate(reviews):
            result = stack.run(review, final={"seed": number})
            assert result.answer in LABELS, result.answer


def test_per_call_choices_and_the_cli_choice_option(smollm2_path):
    with Stack.load("builtin:smollm2-135m-instruct", {"answer.max_tokens": 6}) as stack:
        assert stack.run("Is the sky green?", choices=["yes", "no"]).answer in ("yes", "no")
        assert stack.run("Name a fruit").answer not in ("yes", "no")  # the constraint was for one call only
    out = subprocess.run([sys.executable, "-m", "fslm_edge", "run", "builtin:smollm2-135m-instruct",
                          "Pick a primary colour", "--quiet", "--choice", "red", "--choice", "blue",
                          "--set", "answer.max_tokens=4"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("red", "blue")


def test_a_json_schema_stage_always_prints_json_that_validates(make_stack, tmp_path):
    (tmp_path / "person.json").write_text(json.dumps(PERSON))
    path = make_stack('''
        [[stage]]
        name = "person"
        template = "Describe {input} as JSON with a name and an age."
        json_schema = "person.json"
        max_tokens = 48
    ''')
    with Stack.load(path) as stack:
        for who in ("a pirate", "my grandmother", "a robot"):
            text = stack.run(who).answer
            jsonschema.validate(json.loads(text), PERSON)
        inline = stack.run("a cat", json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                 "required": ["ok"]}, final={"max_tokens": 24}).answer
        assert isinstance(json.loads(inline)["ok"], bool)


def test_a_gbnf_grammar_file_constrains_a_stage(make_stack, tmp_path):
    (tmp_path / "digits.gbnf").write_text('root ::= [0-9] [0-9]? [0-9]?\n')
    path = make_stack('''
        [[stage]]
        name = "n"
        template = "How many legs does a spider have? {input}"
        grammar = "digits.gbnf"
        max_tokens = 5
    ''')
    with Stack.load(path) as stack:
        assert stack.run("Answer with a number.").answer.isdigit()


def test_a_bad_grammar_is_a_file_and_line_error(make_stack, tmp_path):
    (tmp_path / "bad.gbnf").write_text('root ::= "a" | item\n\nitem ::= ( "b" \n')
    path = make_stack('''
        [[stage]]
        name = "n"
        template = "{input}"
        grammar = "bad.gbnf"
    ''')
    with pytest.raises(InputError) as err:
        Stack.load(path)
    assert "bad.gbnf" in str(err.value) and "invalid GBNF" in str(err.value)
    out = subprocess.run([sys.executable, "-m", "fslm_edge", "run", str(path), "hi"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "bad.gbnf" in out.stderr


def test_bad_schemas_and_conflicting_constraints_are_refused(make_stack, tmp_path):
    (tmp_path / "broken.json").write_text('{"type": "object",\n "properties": {]}')
    broken = make_stack('''
        [[stage]]
        name = "n"
        template = "{input}"
        json_schema = "broken.json"
    ''')
    with pytest.raises(StackFileError) as err:
        Stack.load(broken)
    assert "broken.json:2" in str(err.value)
    with pytest.raises(StackFileError, match="give one of choices"):
        Stack.load(make_stack('''
            [[stage]]
            name = "n"
            template = "{input}"
            choices = ["a"]
            grammar = "x.gbnf"
        '''))
    with Stack.load("builtin:smollm2-135m-instruct") as stack:
        with pytest.raises(InputError, match="not a valid JSON schema"):
            stack.run("x", json_schema={"type": "nonsense"})
        with pytest.raises(InputError, match="give one of"):
            stack.run("x", choices=["a"], grammar='root ::= "a"')
        with pytest.raises(InputError, match="max_tokens"):
            stack.run("x", final={"max_tokens": 0})


def test_options_typed_in_the_question_constrain_a_choices_from_input_stage(make_stack):
    path = make_stack('''
        [[stage]]
        name = "answer"
        template = "Question: {question}\\nAnswer:"
        chat = false
        choices_from_input = true
        max_tokens = 12
    ''')
    question = "What do plants absorb from the air?\nA. oxygen\nB. carbon dioxide\nC. helium\nAnswer with the letter."
    with Stack.load(path) as stack:
        result = stack.run(question)
        assert result.answer in ("oxygen", "carbon dioxide", "helium")
        assert "A. oxygen" not in result.stages[0].prompt  # {question} is the question without its options


def test_when_runs_a_stage_only_for_questions_with_or_without_options(make_stack):
    path = make_stack('''
        [[stage]]
        name = "notes"
        template = "Note one fact about: {question}"
        max_tokens = 6

        [[stage]]
        name = "pick"
        when = "options"
        template = "Question: {question}\\nNotes: {notes}\\nAnswer:"
        chat = false
        choices_from_input = true
        max_tokens = 8

        [[stage]]
        name = "reply"
        when = "no_options"
        template = "{question} (notes: {notes}; pick: '{pick}')"
        max_tokens = 6
    ''')
    with Stack.load(path) as stack:
        mc = stack.run("Which is a fruit?\nA. apple\nB. brick")
        assert [s.name for s in mc.stages] == ["notes", "pick"] and mc.answer in ("apple", "brick")
        open_ = stack.run("Which is a fruit?")
        assert [s.name for s in open_.stages] == ["notes", "reply"] and open_.answer == open_.stages[-1].text
        assert "pick: ''" in open_.stages[-1].prompt  # a stage that did not run is empty text to later ones
        assert stack.score_context("Which is a fruit?").stage.name == "pick"  # scoring is multiple choice


def test_when_tells_lettered_options_from_a_yes_no_request(make_stack):
    path = make_stack('''
        [[stage]]
        name = "letters"
        when = "lettered"
        template = "Question: {question}\\nAnswer:"
        chat = false
        choices_from_input = true
        choices_by = "calibrated"
        max_tokens = 8

        [[stage]]
        name = "yes_no"
        when = "yes_no"
        template = "Question: {question}\\nAnswer:"
        chat = false
        choices_from_input = true
        choices_by = "likelihood"
        max_tokens = 8
    ''')
    with Stack.load(path) as stack:
        lettered = stack.run("Which is a fruit?\nA. apple\nB. brick")
        assert [s.name for s in lettered.stages] == ["letters"] and lettered.answer in ("apple", "brick")
        asked = stack.run("Is an apple a fruit? Answer yes or no.")
        assert [s.name for s in asked.stages] == ["yes_no"] and asked.answer in ("yes", "no")
        with pytest.raises(InputError, match="no stage of this stack runs"):
            stack.run("Which is a fruit?")
        assert stack.score_context("Which is a fruit?").stage.name == "letters"


def test_a_question_that_asks_for_yes_or_no_has_those_two_options():
    from fslm_edge.options import split_options

    assert split_options("Is the sun a star?\nAnswer yes or no.").options == ("yes", "no")
    assert split_options("Is it? Reply with yes or no").question == "Is it?"
    for text in ("Why do people say yes or no?", "Say yes or no", "Answer yes or no."):
        assert split_options(text).options == ()  # a question about the words, or no question at all
    lettered = split_options("Which is a fruit?\nA. apple\n(B) brick\nAnswer with the letter.")
    assert lettered.options == ("apple", "brick") and lettered.after == "Answer with the letter."


CALIBRATED = """
[[stage]]
name = "hint"
template = "Say one word about: {question}"
max_tokens = 4
temperature = 0.0

[[stage]]
name = "answer"
chat = false
template = "Question: {question}\\nHint: {hint}\\nAnswer:"
choices_from_input = true
choices_by = "calibrated"
max_tokens = 8
"""


def test_calibrated_choices_subtract_what_a_choice_scores_without_the_question(make_stack):
    """``choices_by = "calibrated"``: the option whose log-probability the
    question raises most over the same prompt with the question "N/A" and no
    earlier text, computed here independently; an option likely after any
    question ("a thing") is no longer picked for that."""
    from fslm_edge.engine.scoring import ChoiceScorer, split_continuation
    from fslm_edge.formats import continuation
    from fslm_edge.prompts import Prompt

    question = "What is frozen water called?\nA. ice\nB. it\nC. a thing"
    options = ["ice", "it", "a thing"]
    with Stack.load(make_stack(CALIBRATED)) as stack:
        result = stack.run(question)
        hint = result.stages[0].text
        model = stack.models[0]

        def logprobs(text: str) -> list[float]:
            prompt = Prompt.trusted("Question: ").plus(text).plus("\nHint: ", trusted=True)
            prompt = prompt.plus(hint if text != "N/A" else "").plus("\nAnswer:", trusted=True)
            conts = [split_continuation(model, prompt, continuation(prompt.text, o))[1] for o in options]
            return [s.logprob for s in ChoiceScorer(model).score(model.tokenize_prompt(prompt), conts)]

        raised = [a - b for a, b in zip(logprobs("What is frozen water called?"), logprobs("N/A"))]
        assert result.answer == options[raised.index(max(raised))]
    one_stage = CALIBRATED.split("[[stage]]")[2].replace("Hint: {hint}\\n", "")
    with Stack.load(make_stack("[[stage]]" + one_stage)) as stack:
        assert stack.run(question).answer == "ice"
        stack.reconfigure({"answer.choices_by": "likelihood"})
        assert stack.run(question).answer == "a thing"  # per byte, the option likely after anything wins


def test_total_choices_compare_whole_log_probabilities(make_stack):
    """``choices_by = "total"``: the option with the larger log-probability,
    computed here independently, not divided by its length in bytes."""
    from fslm_edge.engine.scoring import ChoiceScorer, split_continuation
    from fslm_edge.formats import continuation
    from fslm_edge.prompts import Prompt

    body = CALIBRATED.split("[[stage]]")[2].replace("Hint: {hint}\\n", "").replace('"calibrated"', '"total"')
    question = "Is water wet? Answer yes or no."
    with Stack.load(make_stack("[[stage]]" + body)) as stack:
        answer = stack.run(question).answer
        model = stack.models[0]
        prompt = Prompt.trusted("Question: ").plus("Is water wet?").plus("\nAnswer:", trusted=True)
        conts = [split_continuation(model, prompt, continuation(prompt.text, o))[1] for o in ("yes", "no")]
        scores = [s.logprob for s in ChoiceScorer(model).score(model.tokenize_prompt(prompt), conts)]
        assert answer == ("yes", "no")[scores.index(max(scores))]
