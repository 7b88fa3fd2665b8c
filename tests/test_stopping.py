from hypothesis import given
from hypothesis import strategies as st

from fslm_edge.stopping import StopMatcher


def feed_all(stops, pieces):
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        out.append(matcher.feed(piece))
        if matcher.stopped:
            break
    out.append(matcher.flush())
    return "".join(out), matcher


def test_stop_split_across_pieces_never_leaks():
    matcher = StopMatcher(["\n\nQ:"])
    emitted = [matcher.feed(p) for p in ["Paris", ".\n", "\n", "Q:", " more"]]
    assert "".join(emitted) == "Paris."
    assert matcher.stopped and matcher.matched == "\n\nQ:"
    assert all("\n" not in e for e in emitted[2:])


def test_partial_match_released_when_it_diverges():
    text, matcher = feed_all(["END"], ["a E", "N", "d"])
    assert text == "a ENd" and not matcher.stopped


def test_held_partial_is_text_at_end_of_generation():
    text, matcher = feed_all(["###"], ["x #", "#"])
    assert text == "x ##" and not matcher.stopped


def test_first_completed_stop_wins():
    text, _ = feed_all(["bb", "a"], ["xbba"])
    assert text == "x"
    text, _ = feed_all(["abc", "b"], ["abc"])
    assert text == "a"


@given(
    text=st.text(alphabet="ab\nQ:", max_size=40),
    stops=st.lists(st.text(alphabet="ab\nQ:", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_any_chunking_gives_the_text_before_the_first_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    got, _ = feed_all(stops, pieces)
    ends = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    expected = text[: min(ends)[1]] if ends else text
    assert got == expected
