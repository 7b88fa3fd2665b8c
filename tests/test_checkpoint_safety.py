"""``build --resume`` with a hostile or damaged checkpoint.pt: the file is
loaded with ``weights_only=True`` (it can never run code), and an unusable
one is one error line that says what to do; a full disk during build is one
line too."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from build_fixtures import QA_ROWS, write_jsonl, write_stack  # noqa: E402
from write_fixtures import run_cli  # noqa: E402

from fslm_edge.errors import InputError  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("build_cache")

DATA = '{ file = "qa.jsonl", target = "answer", fields = { input = "question" } }'


class RunsCode:
    """Unpickling this calls os.system (what a crafted checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _build(stack, data_dir, out, resume=False, max_steps=2):
    from fslm_edge.convert.build import BuildOptions, build_stack

    return list(build_stack(stack, BuildOptions(data_dir=data_dir, out_dir=out, progress=False, max_steps=max_steps,
                                                resume=resume)))


@pytest.fixture
def built(tiny, tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", QA_ROWS[:12])
    stack = write_stack(tmp_path, tiny, DATA)
    _build(stack, tmp_path, tmp_path / "out")
    checkpoint = tmp_path / "out" / "answer" / "checkpoint.pt"
    assert checkpoint.is_file()
    return stack, checkpoint


def _unreadable(checkpoint: Path) -> str:
    return rf"checkpoint {checkpoint} is unreadable \(.*\); delete it or run without --resume"


def test_a_real_checkpoint_holds_only_what_weights_only_loads(built):
    _, checkpoint = built
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 2 and state["rng"].dtype == torch.uint8


@pytest.mark.parametrize("how", ["torch.save", "legacy torch.save", "raw pickle"])
def test_a_crafted_checkpoint_never_runs_code(built, tmp_path, how):
    stack, checkpoint = built
    marker = tmp_path / "pwned"
    payload = {"fingerprint": "x", "step": 0, "weights": RunsCode(marker)}
    if how == "raw pickle":
        checkpoint.write_bytes(pickle.dumps(payload))
        pickle.loads(checkpoint.read_bytes())  # the file really does run code when trusted ...
    else:
        torch.save(payload, checkpoint, _use_new_zipfile_serialization=how == "torch.save")
        torch.load(checkpoint, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError, match=_unreadable(checkpoint)):  # ... and resuming does not trust it
        _build(stack, tmp_path, tmp_path / "out", resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not a dict", "missing keys"])
def test_a_damaged_checkpoint_is_one_input_error(built, tmp_path, damage):
    stack, checkpoint = built
    whole = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    elif damage == "garbage":
        checkpoint.write_bytes(os.urandom(4096))
    elif damage == "not a dict":
        torch.save([1, 2, 3], checkpoint)
    else:
        torch.save({"fingerprint": "x", "step": 1}, checkpoint)
    with pytest.raises(InputError, match=_unreadable(checkpoint)):
        _build(stack, tmp_path, tmp_path / "out", resume=True)


def test_cli_resume_with_a_crafted_checkpoint_is_one_line_exit_2(built, tmp_path):
    stack, checkpoint = built
    marker = tmp_path / "pwned"
    torch.save({"weights": RunsCode(marker)}, checkpoint)
    done = run_cli("build", stack, "--data-dir", tmp_path, "--out", tmp_path / "out", "--max-steps", "2",
                   "--resume", "--no-progress")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {checkpoint} is unreadable"), lines
    assert not marker.exists()


@pytest.mark.parametrize("cache", ["filled", "empty"])  # empty: the torch copy of the base is written first
def test_full_disk_during_build_is_one_line_exit_1(built, tmp_path, cache):
    import resource
    import signal

    stack, _ = built

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 10, 4 << 10))

    out = tmp_path / "full"
    env = {"FSLM_EDGE_CACHE": str(tmp_path / "fresh-cache")} if cache == "empty" else None
    done = run_cli("build", stack, "--data-dir", tmp_path, "--out", out, "--max-steps", "2", "--no-progress",
                   preexec_fn=limit, env=env)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("train step")]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing "), lines
    left = [p for folder in (out, tmp_path / "fresh-cache") if folder.exists() for p in folder.rglob("*")
            if p.is_file() and (p.name.endswith(".tmp") or p.suffix in (".gguf", ".safetensors"))]
    assert left == []
