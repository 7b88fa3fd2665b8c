"""scripts/reading_weight.py's pick: weight 0 is the stack's own pick, -1 its answer stage alone."""

import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "reading_weight", Path(__file__).resolve().parents[1] / "scripts" / "reading_weight.py")
reading_weight = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reading_weight)


def _record(gold, read, unread, free, yes_no=False):
    return {"task": "t", "id": "x", "gold": gold, "yes_no": yes_no, "read": read, "unread": unread, "free": free}


def test_weight_zero_is_the_calibrated_pick_and_minus_one_ignores_the_line():
    # Calibrated with the line: option 1 (-3 - -5 = 2 beats -2 - -3 = 1). Without it: option 0.
    rec = _record(1, read=[-2.0, -3.0], unread=[-1.0, -4.0], free=[-3.0, -5.0])
    assert reading_weight.right(rec, 0.0)
    assert not reading_weight.right(rec, -1.0)


def test_a_larger_weight_follows_what_the_line_adds():
    # The line lifts option 0 by 1 and sinks option 1 by 1; read harder, option 0 wins.
    rec = _record(0, read=[-2.0, -1.0], unread=[-3.0, 0.0], free=[-1.0, -1.0])
    assert not reading_weight.right(rec, 0.0)
    assert reading_weight.right(rec, 1.0)


def test_yes_no_is_not_calibrated():
    # "yes" is likelier whole; calibration would flip it to "no".
    rec = _record(0, read=[-1.0, -2.0], unread=[-1.0, -2.0], free=[0.0, -3.0], yes_no=True)
    assert reading_weight.right(rec, 0.0)
    assert not reading_weight.right({**rec, "yes_no": False}, 0.0)


def test_the_table_has_a_row_per_task_and_one_for_all():
    recs = [_record(0, [0.0, -1.0], [0.0, -1.0], [0.0, 0.0]), {**_record(1, [0.0, -1.0], [0.0, -1.0], [0.0, 0.0]),
                                                                "task": "u"}]
    lines = reading_weight.table(recs).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["t", "u", "all"]
    assert lines[-1].split()[1:4] == ["2", "50.0", "50.0"]
