"""Self-consistency voting: pure logic here; a real SmolLM2 stack in test_runtime.py."""

from fslm_edge.voting import majority, most_likely, normalize_answer


def test_answers_that_differ_only_in_form_count_as_one():
    assert normalize_answer(" 1,200. ") == normalize_answer("1200") == "1200"
    assert normalize_answer("Yes!") == normalize_answer("yes")
    assert normalize_answer("1,20") != normalize_answer("120")  # not a digit-group comma


def test_majority_ties_go_to_the_earliest_and_empty_answers_do_not_vote():
    assert majority(["7", "1,200", "1200.", "9"]) == 1
    assert majority(["5", "1,200", "1200.", "5"]) == 0
    assert majority(["", "", "3"]) == 2
    assert majority(["", ""]) == 0


def test_most_likely_ties_go_to_the_earliest():
    assert most_likely([-9.5, -3.25, -7.0]) == 1
    assert most_likely([-2.0, -4.0, -2.0]) == 0
    assert most_likely([float("-inf"), -30.0]) == 1  # an empty sample scores -inf
