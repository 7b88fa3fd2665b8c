"""Hostile evaluation data: every bad row is ``FILE:LINE: what; fix`` (or
skipped and counted with --skip-bad), never a traceback; a file with no
usable row is an error, not a score over nothing."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fslm_edge.errors import DatasetError
from fslm_edge.evaluation.data import read_examples
from fslm_edge.formats import derived_field, mc_input

GOOD_MC = {"id": "ok", "question": "Which one?", "choices": ["a", "b"], "answer": 0}
GOOD_GEN = {"id": "ok", "question": "How many?", "answer": "3"}

HOSTILE = {
    "thirty_choices": ("mc", json.dumps({"question": "Q?", "choices": [f"c{i}" for i in range(30)], "answer": 29}),
                       "30 choices, but options are lettered A-Z"),
    "deep": ("mc", "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    "deep_object": ("gen", '{"question": "q", "answer": "a", "x": ' + "[" * 100 + "]" * 100 + "}", "nested"),
    "surrogate": ("gen", '{"question": "\\ud800 q", "answer": "a"}', "lone surrogate"),
    "infinity": ("gen", '{"question": "q", "answer": Infinity}', "Infinity is not a JSON number"),
    "nan": ("gen", '{"question": "q", "answer": NaN}', "NaN is not a JSON number"),
    "huge_number": ("gen", '{"question": "q", "answer": 1e400}', "too large"),
    "answer_object": ("gen", '{"question": "q", "answer": {"x": 1}}', "must be a string or a number"),
    "not_utf8": ("mc", b'{"question": "caf\xe9?", "choices": ["a", "b"], "answer": 0}', "not UTF-8"),
    "array_row": ("mc", "[1, 2]", "must be a JSON object"),
}


def _write(path, kind, hostile):
    good = json.dumps(GOOD_MC if kind == "mc" else GOOD_GEN).encode()
    bad = hostile if isinstance(hostile, bytes) else hostile.encode()
    path.write_bytes(good + b"\n" + bad + b"\n" + good + b"\n")
    return path


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_row_is_named_by_file_and_line(tmp_path, name):
    kind, line, reason = HOSTILE[name]
    path = _write(tmp_path / "task_test.jsonl", kind, line)
    with pytest.raises(DatasetError, match=rf"task_test\.jsonl:2: .*{reason}.*; fix"):
        read_examples(path, kind)
    bad = []
    assert len(read_examples(path, kind, skip_bad=True, bad=bad)) == 2
    assert [(b.line, reason in b.reason) for b in bad] == [(2, True)]


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    for content in (b"", b"\n\n  \n"):
        path = tmp_path / "empty_test.jsonl"
        path.write_bytes(content)
        with pytest.raises(DatasetError, match=r"empty_test\.jsonl: no examples to evaluate \(it has no rows\)"):
            read_examples(path, "mc", skip_bad=True)


def test_a_file_of_only_bad_rows_is_an_error_even_with_skip_bad(tmp_path):
    path = tmp_path / "bad_test.jsonl"
    path.write_text("{nope\n[1]\n")
    with pytest.raises(DatasetError, match=r"bad_test\.jsonl: no examples to evaluate \(all 2 rows are bad\)"):
        read_examples(path, "mc", skip_bad=True)


@pytest.mark.parametrize("content", [b"not gzip", None])
def test_corrupt_gzip_is_one_error_with_and_without_skip_bad(tmp_path, content):
    if content is None:  # a real gzip cut in half
        whole = gzip.compress((json.dumps(GOOD_MC) + "\n").encode() * 3000)
        content = whole[: len(whole) // 2]
    path = tmp_path / "z_test.jsonl.gz"
    path.write_bytes(content)
    for skip in (False, True):
        with pytest.raises(DatasetError, match=r"z_test\.jsonl\.gz:\d+: the file is corrupt or cut short"):
            read_examples(path, "mc", skip_bad=skip)


def test_letters_never_run_out_in_formats():
    row = {"question": "Q?", "choices": [f"c{i}" for i in range(30)], "answer": 27}
    with pytest.raises(ValueError, match="30 choices"):
        derived_field(row, "answer_letter")
    with pytest.raises(ValueError, match="30 choices"):
        mc_input("Q?", row["choices"])
    assert derived_field(row, "answer_text") == "c27"  # needs no letter
    assert derived_field({**row, "choices": row["choices"][:26], "answer": 25}, "answer_letter") == "Z"


def test_training_data_with_too_many_choices_is_a_dataset_error():
    from fslm_edge.convert.data import field_text

    row = {"question": "Q?", "choices": [f"c{i}" for i in range(27)], "answer": 0}
    with pytest.raises(DatasetError, match=r"f\.jsonl:3: 27 choices"):
        field_text(row, "question_with_choices", "f.jsonl:3")


@pytest.mark.parametrize("name, lettered", [("thirty_choices", True), ("deep", False), ("infinity", False),
                                            ("not_utf8", False), ("surrogate", False)])
def test_eval_cli_says_one_line_and_exits_2(tmp_path, name, lettered):
    from fslm_edge.cli import main

    kind, line, reason = HOSTILE[name]
    path = _write(tmp_path / "task_test.jsonl", kind, line)
    args = ["eval", "builtin:smollm2-135m-instruct", "--data", str(path), "--format", kind,
            "--out", str(tmp_path / "r.json"), "--no-cache"] + (["--lettered"] if lettered else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "task_test.jsonl:2:" in lines[0], lines
    assert not (tmp_path / "r.json").exists()


def test_eval_cli_refuses_an_empty_data_file(tmp_path):
    from fslm_edge.cli import main

    path = tmp_path / "none_test.jsonl"
    path.write_text("")
    result = CliRunner().invoke(main, ["eval", "builtin:smollm2-135m-instruct", "--data", str(path), "--format",
                                       "mc", "--out", str(tmp_path / "r.json"), "--no-cache", "--skip-bad"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {path}: no examples to evaluate (it has no rows); give a JSONL file " \
                                    "with one JSON object per line"


LINES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                     st.sampled_from(["question", "choices", "answer", "id", "context"]), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, max_size=5), kind=st.sampled_from(["mc", "gen"]), skip=st.booleans())
def test_any_bytes_give_examples_or_a_dataset_error(tmp_path, lines, kind, skip):
    path = tmp_path / "fuzz_test.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        examples = read_examples(path, kind, skip_bad=skip)
    except DatasetError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    for example in examples:
        example.question.encode("utf-8")  # everything that reaches a prompt is text
        if kind == "mc":
            mc_input(example.question, list(example.choices))


def test_guessing_the_format_never_fails_or_blocks(tmp_path):
    import os

    from fslm_edge.evaluation.data import guess_kind

    cases = {"deep.jsonl": ("[" * 50_000 + "]" * 50_000 + "\n" + json.dumps(GOOD_MC)).encode(),
             "bytes.jsonl": b"\xff\xfe\n" + json.dumps(GOOD_GEN).encode(), "junk.jsonl.gz": b"not gzip",
             "empty.jsonl": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    assert guess_kind(tmp_path / "deep.jsonl") == "mc" and guess_kind(tmp_path / "bytes.jsonl") == "gen"
    assert guess_kind(tmp_path / "junk.jsonl.gz") == guess_kind(tmp_path / "empty.jsonl") == "gen"
    os.mkfifo(tmp_path / "fifo.jsonl")
    assert guess_kind(tmp_path / "fifo.jsonl") == "gen"  # refused unread: opening it would block
