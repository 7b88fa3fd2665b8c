"""The CLI through click's runner and as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fslm_edge.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--set", "*.max_tokens=6"]


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_run_quiet_prints_only_the_answer():
    result = invoke("run", str(ROOT / "stacks/qa.toml"), "What is the capital of France?", "--quiet", *SHORT)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0]


def test_run_json_prints_one_event_per_line():
    result = invoke("run", str(ROOT / "stacks/qa.toml"), "Why do birds fly?", "--json", *SHORT)
    events = [json.loads(line) for line in result.output.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "stage_start" and types[-1] == "result" and types.count("stage_end") == 2  # recall, reply
    assert events[-1]["answer"] == [e for e in events if e["type"] == "stage_end"][-1]["text"]


def test_run_reads_stdin_and_rich_view_shows_stages_and_prompts():
    question = "Is ice cold?\nA. yes\nB. no\n"  # lettered options: the multiple-choice stages run
    result = invoke("run", str(ROOT / "stacks/qa.toml"), "-", "--show-prompts", *SHORT, input=question)
    assert result.exit_code == 0
    for text in ("recall", "reason", "answer", "prompt", "Is ice cold?"):
        assert text in result.output


def test_set_override_reaches_the_stage():
    result = invoke("run", str(ROOT / "stacks/qa.toml"), "Hi", "--json", "--set", "*.max_tokens=2")
    ends = [json.loads(line) for line in result.output.splitlines() if '"stage_end"' in line]
    assert all(e["stats"]["generated_tokens"] <= 2 for e in ends)


@pytest.mark.parametrize("args,message", [
    (["run", "nope.toml", "q"], "no such stack file"),
    (["run", "{stack}", "   "], "question is empty"),
    (["run", "{stack}", "q", "--set", "answer.temprature=1"], "did you mean 'temperature'"),
    (["run", "{stack}", "q", "--set", "oops"], "stage.key=value"),
    (["info", "{bad_model}"], "model file not found"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    bad_model = tmp_path / "bad.toml"
    bad_model.write_text('[stack]\nname = "x"\nmodel = "missing.gguf"\n[[stage]]\nname = "s"\ntemplate = "{input}"\n')
    args = [a.format(stack=ROOT / "stacks/qa.toml", bad_model=bad_model) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_info_takes_a_model_reference_as_run_does():
    result = CliRunner().invoke(main, ["info", "builtin:smollm2-135m-instruct", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["file"] == "builtin:smollm2-135m-instruct"
    assert [s["name"] for s in report["stages"]] and report["models"][0]["architecture"] == "llama"


def test_info_reports_models_and_memory():
    result = invoke("info", str(ROOT / "stacks/qa.toml"), "--json")
    report = json.loads(result.output)
    assert len(report["models"]) == 1
    model = report["models"][0]
    assert model["architecture"] == "llama" and model["quantization"] == "Q4_1"
    assert model["stages"] == ["recall", "reason", "answer", "answer_yes_no", "reply"]
    assert report["memory_estimate_bytes"] > model["file_bytes"]
    assert "memory estimate" in invoke("info", str(ROOT / "stacks/qa.toml")).output


def _cli(*args, input=None, timeout=120):
    exe = Path(sys.executable).with_name("fslm-edge")
    return subprocess.run([str(exe), *args], input=input, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_real_subprocess_pipe_and_errors(tmp_path):
    done = _cli("run", "stacks/qa.toml", "--quiet", *SHORT, input="What colour is grass?")
    assert done.returncode == 0 and done.stdout.strip() and done.stderr == ""
    broken = tmp_path / "broken.toml"
    broken.write_text("[stack\nname = 1\n")
    done = _cli("run", str(broken), "q")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "broken.toml:1" in done.stderr
    assert "Traceback" not in done.stderr
    debug = _cli("--debug", "run", str(broken), "q")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_reader_closing_the_pipe_ends_the_run_quietly():
    exe = Path(sys.executable).with_name("fslm-edge")
    proc = subprocess.Popen([str(exe), "run", "stacks/qa.toml", "Why is the sea salty?", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert '"stage_start"' in proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    try:
        assert proc.wait(timeout=60) == 141
    finally:
        proc.kill()
    assert proc.stderr.read() == ""


def test_ctrl_c_during_generation_is_one_line_not_a_crash():
    import signal
    import time

    exe = Path(sys.executable).with_name("fslm-edge")
    proc = subprocess.Popen([str(exe), "run", "stacks/qa.toml", "Write a long essay on the sea.", "--json",
                             "--set", "*.max_tokens=400"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as a terminal would: a background test run may have SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # generation has started
    assert '"stage_start"' in first
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["error: interrupted (Ctrl-C); nothing was written"]
