"""The shared file helpers: atomic writes (stale temp files, Ctrl-C, full
disk), the append-only record log (torn tails), JSON from outside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm_edge.errors import DatasetError, InputError, RuntimeFailure
from fslm_edge.fileio import (
    append_record,
    atomic_folder,
    atomic_output,
    atomic_path,
    atomic_write,
    fingerprint,
    output_file,
    output_folder,
    parse_json_text,
    read_jsonl,
    read_records,
    sha256_file,
    stale_temp_files,
)

ROOT = Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, b"old")
    atomic_write(target, "new \u00e9")
    assert target.read_text(encoding="utf-8") == "new \u00e9"
    atomic_write(target, lambda handle: handle.write(b"from a writer"))
    assert target.read_bytes() == b"from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's 0600


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_an_interrupted_write_keeps_the_old_file_and_removes_its_temp(tmp_path, error):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_output(target, "w") as handle:
            handle.write("half")
            raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_stale_temps_of_the_same_target_are_removed_live_ones_and_others_kept(tmp_path):
    target = tmp_path / "m.gguf"
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".m.gguf.{dead}.0123abcd.tmp", tmp_path / ".m.gguf.k3j_x9az.tmp"]  # ours, mkstemp's
    live = tmp_path / f".m.gguf.{alive}.0123abcd.tmp"
    other_target = tmp_path / f".m.gguf.manifest.json.{dead}.0123abcd.tmp"
    unrelated = tmp_path / ".m.gguf.notes.tmp"
    for path in (*stale, live, other_target, unrelated):
        path.write_bytes(b"x")
    (tmp_path / f".m.gguf.{dead}.feedbeef.tmp").mkdir()  # a killed folder write
    assert set(stale_temp_files(target)) == {*stale, tmp_path / f".m.gguf.{dead}.feedbeef.tmp"}
    atomic_write(target, b"new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"m.gguf", live.name, other_target.name, unrelated.name}


def test_atomic_path_runs_before_commit_on_the_complete_temp(tmp_path):
    target = tmp_path / "x.bin"
    seen = []

    def before(tmp: Path) -> None:
        seen.append((tmp.read_bytes(), target.exists()))

    with atomic_path(target, before) as tmp:
        tmp.write_bytes(b"payload")
    assert seen == [(b"payload", False)] and target.read_bytes() == b"payload"


def test_a_failing_before_commit_leaves_nothing(tmp_path):
    def refuse(tmp: Path) -> None:
        raise InputError("does not fit")

    with pytest.raises(InputError):
        atomic_write(tmp_path / "x.bin", b"data", before_commit=refuse)
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_an_old_folder(tmp_path):
    target = tmp_path / "adapter"
    for text in ("one", "two"):
        with atomic_folder(target) as tmp:
            (tmp / "f.txt").write_text(text)
    assert (target / "f.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as tmp:
            (tmp / "f.txt").write_text("three")
            raise KeyboardInterrupt
    assert (target / "f.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["adapter"]


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {root!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # past the limit write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    from fslm_edge.errors import RuntimeFailure
    from fslm_edge.fileio import {call}
    try:
        {body}
    except RuntimeFailure as exc:
        print("RuntimeFailure:", exc)
""")


@pytest.mark.parametrize("call, body", [
    ("atomic_write", "atomic_write(sys.argv[1], b'x' * (1 << 20))"),
    ("append_record", "append_record(sys.argv[1], {'text': 'x' * (1 << 20)})"),
    # a writer that reports failure in its own words (as torch does): the disk is asked
    ("atomic_path", "with atomic_path(sys.argv[1]) as tmp:\n"
                    "        try:\n            open(tmp, 'wb').write(b'x' * (1 << 20))\n"
                    "        except OSError:\n            raise RuntimeError('file write failed')"),
])
def test_a_full_disk_is_a_runtime_failure_naming_the_file(tmp_path, call, body):
    target = tmp_path / "out.bin"
    code = FULL_DISK.format(root=str(ROOT), call=call, body=body)
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"RuntimeFailure: no space left on device writing {target}" in done.stdout
    if call != "append_record":
        assert list(tmp_path.iterdir()) == []


def test_dev_full_is_a_runtime_failure():
    from fslm_edge.fileio import space_errors_named

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(RuntimeFailure, match="no space left on device writing /dev/full"):
        with space_errors_named("/dev/full"), open("/dev/full", "wb") as handle:
            handle.write(b"x" * 8192)
            handle.flush()


def test_output_paths(tmp_path):
    with pytest.raises(InputError, match=f"--out {tmp_path} is a directory; give a file path"):
        output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        output_file(tmp_path / "f" / "x.gguf")
    with pytest.raises(InputError, match="is a file; give a folder path"):
        output_folder(tmp_path / "f")
    assert output_file(tmp_path / "new" / "x.gguf") == tmp_path / "new" / "x.gguf"


# -- the record log -----------------------------------------------------------------

def test_a_torn_multibyte_tail_is_dropped_and_the_next_record_kept(tmp_path):
    log = tmp_path / "cache.jsonl"
    append_record(log, {"key": "a", "text": "caf\u00e9"})
    with open(log, "ab") as handle:
        handle.write('{"key": "b", "text": "\u00e9'.encode()[:-1])  # cut inside the two-byte \u00e9
    assert read_records(log) == [{"key": "a", "text": "caf\u00e9"}]
    append_record(log, {"key": "c"})
    assert read_records(log) == [{"key": "a", "text": "caf\u00e9"}, {"key": "c"}]


def test_a_torn_ascii_tail_does_not_swallow_the_next_record(tmp_path):
    log = tmp_path / "cache.jsonl"
    append_record(log, {"key": "a"})
    with open(log, "ab") as handle:
        handle.write(b'{"key": "b", "val')
    append_record(log, {"key": "c"})
    assert read_records(log) == [{"key": "a"}, {"key": "c"}]
    assert log.read_bytes().count(b"\n") == 2


def test_garbage_lines_inside_a_log_are_skipped(tmp_path):
    log = tmp_path / "cache.jsonl"
    log.write_bytes(b'{"key": 1}\n\xff\xfe not text\n[1, 2]\n' + b"[" * 50_000 + b"\n" + b'{"key": 2}\n')
    assert read_records(log) == [{"key": 1}, {"key": 2}]


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3), min_size=1,
                        max_size=4),
       cut=st.integers(min_value=1, max_value=400), more=st.dictionaries(st.text(max_size=3), st.text(max_size=6)))
def test_any_torn_tail_loses_only_the_torn_record(tmp_path_factory, records, cut, more):
    log = tmp_path_factory.mktemp("log") / "cache.jsonl"
    for record in records[:-1]:
        append_record(log, record)
    whole = json.dumps(records[-1], ensure_ascii=False).encode()
    with open(log, "ab") as handle:
        handle.write(whole[: min(cut, len(whole) - 1)] if len(whole) > 1 else b"")
    assert read_records(log) == records[:-1]
    append_record(log, more)
    assert read_records(log) == [*records[:-1], more]


# -- JSON from outside ----------------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("[" * 50_000 + "]" * 50_000, "nested"),
    ('{"a": "\\ud800"}', "lone surrogate"),
    ('{"a": Infinity}', "Infinity is not a JSON number"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": 1e999}', "too large"),
    (b'{"a": "\xff"}', "not UTF-8"),
    ("{nope", "not valid JSON"),
])
def test_parse_json_text_refuses_what_nothing_downstream_can_use(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_json_text(text)


def test_read_jsonl_names_file_and_line_or_skips(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": NaN}\n\xff\n[1]\n{"a": 2}\n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:3: NaN is not a JSON number.*; fix"):
        list(read_jsonl(path))
    bad = []
    assert list(read_jsonl(path, skip_bad=True, bad=bad)) == [(1, {"a": 1}), (6, {"a": 2})]
    assert [b.line for b in bad] == [3, 4, 5]


def test_read_jsonl_corrupt_gzip_is_one_dataset_error(tmp_path):
    import gzip

    good = gzip.compress(b'{"a": 1}\n' * 2000)
    (tmp_path / "cut.jsonl.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    for name in ("cut.jsonl.gz", "junk.jsonl.gz"):
        with pytest.raises(DatasetError, match=rf"{name}:\d+: the file is corrupt or cut short"):
            list(read_jsonl(tmp_path / name, skip_bad=True))


def test_hashes(tmp_path):
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert fingerprint("a", "b") == hashlib.sha1(b"a\nb").hexdigest() != fingerprint("a\nb", "")


def test_sigkill_during_a_write_is_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "big.bin"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from fslm_edge.fileio import atomic_output
        with atomic_output(sys.argv[1]) as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(stale_temp_files(target)) == 1 and not target.exists()
    atomic_write(target, b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_the_caches_survive_a_torn_multibyte_tail(tmp_path):
    from fslm_edge.stagecache import StageOutputCache

    cache = StageOutputCache(tmp_path / "upstream.jsonl", "fp")
    cache.put("question \u00e9", {"text": "r\u00e9ponse"})
    with open(cache.path, "ab") as handle:
        handle.write('{"key": "x", "text": "\u00e9'.encode()[:-1])
    again = StageOutputCache(tmp_path / "upstream.jsonl", "fp")
    assert again.get("question \u00e9") == {"text": "r\u00e9ponse"}
    again.put("other", {"text": "b"})
    assert StageOutputCache(tmp_path / "upstream.jsonl", "fp").get("other") == {"text": "b"}


def test_read_jsonl_refuses_pipes_and_folders_and_overlong_lines(tmp_path, monkeypatch):
    import fslm_edge.fileio as fileio

    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="not a regular file"):
        list(read_jsonl(fifo))  # would block forever if opened
    with pytest.raises(DatasetError, match="is a folder"):
        list(read_jsonl(tmp_path))
    monkeypatch.setattr(fileio, "MAX_LINE_BYTES", 64)
    path = tmp_path / "long.jsonl"
    path.write_text('{"a": 1}\n' + '{"a": "' + "x" * 500 + '"}\n' + '{"a": 2}\n')
    with pytest.raises(DatasetError, match=r"long\.jsonl:2: the line is longer than"):
        list(read_jsonl(path))
    assert list(read_jsonl(path, skip_bad=True)) == [(1, {"a": 1}), (3, {"a": 2})]


def test_a_complete_last_record_that_lost_only_its_newline_is_kept(tmp_path):
    log = tmp_path / "cache.jsonl"
    log.write_bytes(b'{"key": "a"}\n{"key": "b", "v": {"n": 1}}')
    assert read_records(log) == [{"key": "a"}, {"key": "b", "v": {"n": 1}}]
    append_record(log, {"key": "c"})
    assert read_records(log) == [{"key": "a"}, {"key": "b", "v": {"n": 1}}, {"key": "c"}]
    log.write_bytes(b'{"key": "only", "torn')  # a torn first and only line
    append_record(log, {"key": "d"})
    assert log.read_bytes() == b'{"key": "d"}\n'
