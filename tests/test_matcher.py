"""The strict generate-mode matcher on real-looking answer texts."""

from __future__ import annotations

import pytest

from fslm_edge.evaluation.matcher import match_answer, strip_answer

PLANTS = ["oxygen", "carbon dioxide", "nitrogen", "helium"]  # gold: B


@pytest.mark.parametrize("answer", [
    "B", "B.", "(B)", "B)", "[B]", "Answer: B", "The answer is B.", "The correct answer is (B)", "**B**",
    "B) carbon dioxide", "B. carbon dioxide", "B: Carbon dioxide.", "B\nPlants take in carbon dioxide.",
    "carbon dioxide", "Carbon dioxide.", "carbon dioxide.", "The answer is carbon dioxide",
    "Plants absorb carbon dioxide from the air.", "Option B",
    "answer: b) carbon dioxide",  # a lowercase letter is no letter; the text still names B
])
def test_answers_that_name_the_gold_option(answer):
    assert match_answer(answer, PLANTS).pred == 1, match_answer(answer, PLANTS)


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"),
    ("   ", "empty answer"),
    ("Answer:", "names no option"),
    ("A or B", "several letters"),
    ("B or C.", "several letters"),
    ("A, B", "several letters"),
    ("oxygen and carbon dioxide", "contains several options' texts"),
    ("Plants absorb carbon dioxide and release oxygen.", "contains several options' texts"),
    ("B. oxygen", "letter and another option's text"),
    ("E", "letter E is not an option"),
    ("water vapour", "names no option"),
    ("I think so", "names no option"),
])
def test_answers_that_name_two_none_or_an_invented_option(answer, reason):
    found = match_answer(answer, PLANTS)
    assert found.pred is None and found.reason == reason, found


def test_an_option_that_is_a_substring_of_another():
    colours = ["red", "red and blue", "green"]
    assert match_answer("red and blue", colours).pred == 1
    assert match_answer("It is red and blue.", colours).pred == 1
    assert match_answer("red", colours).pred == 0
    assert match_answer("Red.", colours).pred == 0
    # "red" also on its own, outside "red and blue": two options
    assert match_answer("red, or maybe red and blue", colours).named == (0, 1)


def test_letters_inside_words_and_articles_are_not_letters():
    fruit = ["Apple", "Banana", "Cherry", "Date"]
    assert match_answer("Apple", fruit).pred == 0 and match_answer("Apple", fruit).reason == "option text"
    assert match_answer("Banana bread is tasty", fruit).pred == 1  # "B" of Banana is no letter
    sounds = ["a bell", "a drum", "a whistle"]
    assert match_answer("a drum", sounds).pred == 1  # the article "a" is not option A
    assert match_answer("a", sounds).pred is None  # a lone lowercase "a" names nothing
    assert match_answer("A drum.", sounds).pred == 1  # a capital followed by a plain space is no letter
    animals = ["a fish", "a snail", "a worm", "a dog"]
    assert match_answer("A dog barks.", animals).pred == 3
    assert match_answer("D. a dog", animals).reason == "letter and its option's text"


def test_yes_no_first_word_decides():
    yes_no = ["yes", "no"]
    assert match_answer("Yes.", yes_no).pred == 0
    assert match_answer("No, because a rock cannot fly. Yes, really.", yes_no).pred == 1
    assert match_answer("Answer: no", yes_no).pred == 1
    assert match_answer("Probably not", yes_no).pred is None
    assert match_answer("Nobody knows", yes_no).pred is None  # "no" inside a word is no answer
    assert match_answer("", yes_no).reason == "no yes/no word"


def test_an_option_that_looks_like_a_prefix():
    words = ["case", "reason", "how", "because", "answer"]
    assert match_answer("answer", words).pred == 4
    assert match_answer("The answer is answer.", words).pred == 4
    assert match_answer("Answer: reason", words).pred == 1


def test_strip_answer_prefixes():
    assert strip_answer('  "The answer is: B"  ') == "B"
    assert strip_answer("**Answer:** The answer is C.") == "C."
    assert strip_answer("Answers vary") == "Answers vary"
    assert strip_answer("The answer is") == "The answer is"  # nothing follows: kept
