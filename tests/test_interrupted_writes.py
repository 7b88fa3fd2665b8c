"""export-lora / merge / quantize killed inside their write window, on a full
disk, or pointed at a folder: never an artifact without its manifest, no temp
file that a later run leaves behind, one ``error:`` line."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from write_fixtures import (  # noqa: E402
    CLI,
    ROOT,
    artifacts_without_manifest,
    cli_env,
    run_cli,
    stray_temp_files,
    tiny_peft_adapter,
)

from fslm_edge.fileio import sha256_file  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return tiny_peft_adapter(tmp_path_factory.mktemp("peft") / "adapter")


def _commands(adapter: Path, tiny: Path, out: Path) -> dict[str, list[str]]:
    return {
        "export-lora": ["export-lora", str(adapter), "--base", str(tiny), "--out", str(out / "x.lora.gguf")],
        "merge": ["merge", str(adapter), "--base", str(tiny), "--out", str(out / "m.f16.gguf")],
        "quantize": ["quantize", str(tiny), "--out", str(out / "q.gguf"), "--type", "q8_0"],
    }


# A process that dies (os._exit: no cleanup, like SIGKILL) at the n-th os.replace.
DIE_AT_RENAME = textwrap.dedent("""
    import os, sys
    real, seen = os.replace, [0]
    def replace(src, dst):
        seen[0] += 1
        if seen[0] == int(os.environ["DIE_AT"]):
            os._exit(137)
        return real(src, dst)
    os.replace = replace
""")


@pytest.mark.parametrize("command", ["export-lora", "merge", "quantize"])
def test_death_at_each_rename_never_leaves_an_artifact_without_manifest(adapter, tiny, tmp_path, command):
    args = _commands(adapter, tiny, tmp_path)[command]
    artifact = Path(args[args.index("--out") + 1])
    env = cli_env()
    for die_at in (1, 2):  # 1: the manifest's rename, 2: the artifact's
        done = subprocess.run([sys.executable, "-c", DIE_AT_RENAME + CLI, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**env, "DIE_AT": str(die_at)})
        assert done.returncode == 137, done.stderr
        assert not artifact.exists()
        assert artifacts_without_manifest(tmp_path) == []
        assert stray_temp_files(tmp_path)  # what the dead process could not remove ...
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert stray_temp_files(tmp_path) == []  # ... the next run did
    manifest = json.loads(artifact.with_name(artifact.name + ".manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(artifact) and manifest["artifact"] == artifact.name


@pytest.mark.parametrize("command", ["export-lora", "merge", "quantize"])
def test_sigkill_in_the_write_window_then_rerun(adapter, tiny, tmp_path, command):
    """A real SIGKILL as soon as the command's first temp file appears."""
    args = _commands(adapter, tiny, tmp_path)[command]
    child = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=ROOT, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while child.poll() is None and not stray_temp_files(tmp_path):
            pass
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert artifacts_without_manifest(tmp_path) == []
    assert run_cli(*args).returncode == 0
    assert stray_temp_files(tmp_path) == [] and artifacts_without_manifest(tmp_path) == []


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("command", ["export-lora", "merge", "quantize"])
def test_full_disk_is_one_line_exit_1_and_leaves_nothing(adapter, tiny, tmp_path, command):
    args = _commands(adapter, tiny, tmp_path)[command]
    artifact = Path(args[args.index("--out") + 1])
    done = run_cli(*args, preexec_fn=_file_size_limit(2 << 10))  # the tiny LoRA is ~7 KB
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: no space left on device writing {artifact}; "
                                                "free some space and run again"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["export-lora", "merge", "quantize"])
def test_out_naming_a_folder_is_one_error_line(adapter, tiny, tmp_path, command):
    from click.testing import CliRunner

    from fslm_edge.cli import main

    args = _commands(adapter, tiny, tmp_path)[command]
    args[args.index("--out") + 1] = str(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --out {tmp_path} is a directory; give a file path"


def test_build_out_naming_a_file_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from fslm_edge.cli import main

    blocker = tmp_path / "f"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["build", "s.toml", "--data-dir", str(tmp_path), "--out", str(blocker)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --out {blocker} is a file; give a folder path"


def test_an_adapter_that_does_not_fit_leaves_nothing(tmp_path, adapter, tiny_gemma):
    done = run_cli("export-lora", str(adapter), "--base", str(tiny_gemma), "--out", str(tmp_path / "x.gguf"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory) -> Path:
    from build_fixtures import tiny_gguf

    folder = tmp_path_factory.getbasetemp() / "tiny"
    folder.mkdir(exist_ok=True)
    return tiny_gguf(folder, "gemma3")
