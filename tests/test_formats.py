from fslm_edge.convert.data import field_text
from fslm_edge.evaluation.data import Example
from fslm_edge.evaluation.tasks import get_task
from fslm_edge.formats import continuation, derived_field, mc_input

ROW = {"id": "1", "question": "Which is a mammal?", "choices": ["shark", "whale", "trout"], "answer": 1}


def test_training_input_is_exactly_what_evaluation_asks_a_stack():
    example = Example(id="1", question=ROW["question"], choices=tuple(ROW["choices"]), answer=1)
    asked = get_task("arc_easy").stack_input(example)
    assert field_text(ROW, "question_with_choices", "f:1") == asked == mc_input(ROW["question"], ROW["choices"])
    assert asked.endswith("A. shark\nB. whale\nC. trout")


def test_without_shown_choices_a_stack_is_asked_the_bare_question_training_reads_as_question():
    example = Example(id="1", question=ROW["question"], choices=tuple(ROW["choices"]), answer=1)
    assert get_task("arc_easy").stack_input(example, show_choices=False) == field_text(ROW, "question", "f:1")


def test_continuation_has_a_leading_space_only_after_a_prompt_ending_mid_line():
    assert continuation("Question: q\nAnswer:", " whale ") == " whale"
    assert continuation("<|im_start|>assistant\n", "whale") == "whale"
    assert continuation("Answer: ", "whale") == "whale"  # scoring moves the prompt's trailing space itself


def test_answer_fields():
    assert field_text(ROW, "answer_text", "f:1") == "whale"
    assert field_text(ROW, "answer_letter", "f:1") == "B"
    assert derived_field({**ROW, "answer": 7}, "answer_text") is None
    assert derived_field(ROW, "nope") is None
