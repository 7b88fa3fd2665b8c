"""``fslm-edge serve`` against real clients: the official ``openai`` package and
raw HTTP, on a server subprocess listening on a loopback port it picked itself
(``--port 0``), stopped by the fixture. Real inference on the packaged SmolLM2,
a few tokens per answer."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from fslm_edge.server.errors import APIError  # noqa: E402
from fslm_edge.server.protocol import CHAT_FIELDS, COMPLETION_FIELDS, parse_chat, parse_completion  # noqa: E402
from fslm_edge.server.workers import QueueFull, QueueTimeout, SlotQueue  # noqa: E402

KEY = "test-key-1234"
LONG_STORY = "Write a very long story about a dragon and a lighthouse, at least 2000 words."  # 600+ tokens
BUILTIN = "builtin:smollm2-135m-instruct"
TWO_STAGES = """
[[stage]]
name = "recall"
template = "Name one fact about {input}."
max_tokens = 6

[[stage]]
name = "answer"
template = "Fact: {recall}\\nIn three words, what is {input}?"
max_tokens = 6
"""


class Server:
    """A ``fslm-edge serve`` subprocess; ``url`` once it listens."""

    def __init__(self, *args: str):
        command = [sys.executable, "-c", "from fslm_edge.cli import main; main()", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(180) or not self.url:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.log))
        self.host, self.port = re.match(r"http://([\d.]+):(\d+)", self.url).groups()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"at (http://\S+/v1)", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def client(self, key: str = KEY, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120, **options)

    def request(self, method: str, path: str, body: bytes | None = None, key: str | None = KEY,
                headers: dict | None = None) -> tuple[int, dict, dict]:
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key:
            sent["Authorization"] = f"Bearer {key}"
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, dict(response.getheaders()), json.loads(data) if data else {}

    def health(self) -> dict:
        return self.request("GET", "/health")[2]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import write_stack

    path = write_stack(tmp_path_factory.mktemp("serve"), TWO_STAGES, name="two.toml", threads=1)
    running = Server(str(path), BUILTIN, "--api-key", KEY, "--workers", "2", "--queue", "4")
    yield running
    running.stop()
    assert running.proc.returncode == 0, "".join(running.log)


def builtin_id(server: Server) -> str:
    ids = [m.id for m in server.client().models.list().data]
    return next(i for i in ids if i != "test")


# -- the openai package ------------------------------------------------------------
def test_models_are_listed(server):
    models = server.client().models.list().data
    assert {m.id for m in models} >= {"test"} and len(models) == 2
    two = next(m for m in models if m.id == "test")
    assert two.model_extra["fslm_edge"]["stages"] == ["recall", "answer"]
    assert two.model_extra["fslm_edge"]["workers"] == 2


def test_chat_completion_carries_every_stage(server):
    response = server.client().chat.completions.create(
        model="test", max_tokens=5, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the moon"}])
    extra = response.model_extra["fslm_edge"]
    assert [s["name"] for s in extra["stages"]] == ["recall", "answer"]
    answer = extra["stages"][-1]
    assert response.choices[0].message.content == answer["text"] and answer["text"]
    assert answer["stats"]["generated_tokens"] <= 5  # max_tokens applies to the final stage
    assert extra["stages"][0]["stats"]["generated_tokens"] <= 6
    assert extra["input"] == "the moon" and "the moon" in answer["prompt"]
    assert extra["stages"][0]["text"] in answer["prompt"]  # the recall text reached the answer stage
    assert extra["dropped_messages"] == 1
    assert response.usage.prompt_tokens == sum(s["stats"]["prompt_tokens"] for s in extra["stages"])
    assert response.usage.completion_tokens == sum(s["stats"]["generated_tokens"] for s in extra["stages"])
    assert response.choices[0].finish_reason in ("stop", "length")


def test_streamed_chat_gives_final_text_as_content_and_stages_as_progress(server):
    stream = server.client().chat.completions.create(
        model="test", max_tokens=5, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "the sun"}])
    content, progress, result, usage = [], [], None, None
    for chunk in stream:
        extra = (chunk.model_extra or {}).get("fslm_edge")
        if chunk.choices and chunk.choices[0].delta.content:
            content.append(chunk.choices[0].delta.content)
        if extra and extra["event"] == "result":
            result = extra
        elif extra:
            progress.append(extra)
        if chunk.usage is not None:
            usage = chunk.usage
    assert result is not None and "".join(content) == result["stages"][-1]["text"] != ""
    starts = [p["stage"] for p in progress if p["event"] == "stage_start"]
    assert starts == ["recall", "answer"]
    recall = "".join(p["text"] for p in progress if p["event"] == "delta" and p["stage"] == "recall")
    assert recall.strip() == result["stages"][0]["text"]  # earlier stages stream as progress only
    assert not any(p["event"] == "delta" and p["stage"] == "answer" for p in progress)
    assert [p["stage"] for p in progress if p["event"] == "stage_end"] == ["recall", "answer"]
    assert usage.total_tokens == result["usage"]["total_tokens"] > 0


def test_completion_endpoint_on_a_plain_model(server):
    model = builtin_id(server)
    same = {"model": model, "prompt": "Name a colour.", "max_tokens": 4, "seed": 3, "temperature": 0.5}
    response = server.client().completions.create(**same)  # seeded: the same text on any instance
    extra = response.model_extra["fslm_edge"]
    assert len(extra["stages"]) == 1 and extra["stages"][0]["stats"]["generated_tokens"] <= 4
    assert response.choices[0].text == extra["stages"][0]["text"]
    streamed = server.client().completions.create(**same, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == response.choices[0].text


def test_json_schema_output_validates(server):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["city", "year"], "additionalProperties": False}
    response = server.client().chat.completions.create(
        model=builtin_id(server), max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        messages=[{"role": "user", "content": "Where and when were the first modern Olympics held?"}])
    value = json.loads(response.choices[0].message.content)
    assert set(value) == {"city", "year"} and isinstance(value["city"], str) and isinstance(value["year"], int)
    plain = server.client().chat.completions.create(
        model=builtin_id(server), max_tokens=60, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the colour of the sky as JSON with one key, colour."}])
    assert plain.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(plain.choices[0].message.content), dict)


def test_stop_and_seed_apply_to_the_final_stage(server):
    client = server.client()
    ask = {"model": builtin_id(server), "max_tokens": 12, "temperature": 1.0, "seed": 11,
           "messages": [{"role": "user", "content": "Count: 1, 2, 3,"}]}
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first  # same seed, same text
    stopped = client.chat.completions.create(**{**ask, "temperature": 0, "stop": ["5"]})
    assert "5" not in stopped.choices[0].message.content


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as caught:
        server.client().chat.completions.create(model="stacks/qa.toml", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found"


def test_wrong_or_missing_key_is_401(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    status, _, body = server.request("GET", "/v1/models", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert server.request("GET", "/health", key=None)[2] == {"status": "ok"}  # no details without the key


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"model": "test", "messages": [{"role": "user", "content": "x"}], "colour": 1}).encode(), "colour"),
    (json.dumps({"model": "test", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), "n"),
    (json.dumps({"model": "test", "messages": [{"role": "user", "content": "x"}],
                 "max_tokens": "many"}).encode(), "max_tokens"),
    (json.dumps({"model": "test", "messages": [{"role": "assistant", "content": "x"}]}).encode(),
     "messages[0].role"),
    (json.dumps({"model": "test", "messages": []}).encode(), "messages"),
])
def test_bad_requests_are_400_in_openai_shape(server, body, param):
    status, _, answer = server.request("POST", "/v1/chat/completions", body)
    assert status == 400 and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param


def test_context_overflow_is_400_with_the_token_counts(server):
    status, _, body = server.request("POST", "/v1/chat/completions", json.dumps({
        "model": "test", "max_tokens": 5000, "messages": [{"role": "user", "content": "the moon"}]}).encode())
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert re.search(r"\d+ tokens plus max_tokens 5000", body["error"]["message"])


def test_oversized_body_unknown_path_and_method(server):
    huge = json.dumps({"model": "test", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
    status, _, body = server.request("POST", "/v1/chat/completions", huge)
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert server.request("GET", "/v1/files/etc/passwd")[0] == 404
    assert server.request("GET", "/v1/chat/completions")[0] == 405
    assert server.health()["status"] == "ok"


# -- disconnects and load ---------------------------------------------------------------
def test_a_client_that_disconnects_stops_the_generation(server):
    model = builtin_id(server)
    before = server.health()["models"][model]["cancelled"]
    stream = server.client().chat.completions.create(
        model=model, max_tokens=1500, stream=True,
        messages=[{"role": "user", "content": LONG_STORY}])
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = server.health()["models"][model]
        if status["cancelled"] > before and status["busy"] == 0:
            break
        time.sleep(0.1)
    assert status["cancelled"] == before + 1 and status["busy"] == 0, status  # stopped, not finished
    again = server.client().chat.completions.create(model=model, max_tokens=3,
                                                    messages=[{"role": "user", "content": "Say hi."}])
    assert again.choices[0].message.content


def test_a_waiting_non_streaming_client_that_disconnects_stops_the_generation(server):
    model = builtin_id(server)
    before = server.health()["models"][model]
    body = json.dumps({"model": model, "max_tokens": 1500, "messages": [{"role": "user", "content": LONG_STORY}]})
    connection = http.client.HTTPConnection(server.host, int(server.port), timeout=60)
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    deadline = time.monotonic() + 30
    while server.health()["models"][model]["busy"] == before["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few tokens into the story
    connection.close()  # without reading the answer
    while time.monotonic() < deadline:
        status = server.health()["models"][model]
        if status["cancelled"] > before["cancelled"] and status["busy"] == 0:
            break
        time.sleep(0.1)
    assert status["cancelled"] == before["cancelled"] + 1 and status["busy"] == 0, status


def test_load_every_request_answered_or_refused_never_mixed_up(server):
    """40 questions from 8 clients against 2 instances and 4 waiting places:
    a refused question (503) is asked again until answered."""
    model = builtin_id(server)
    client = server.client()
    before = server.health()["models"][model]

    def ask(number: int) -> tuple[int, dict, int]:
        refusals = 0
        while True:
            try:
                response = client.chat.completions.create(
                    model=model, max_tokens=3, messages=[{"role": "user", "content": f"Repeat this number: {number}"}])
                return number, response.model_extra["fslm_edge"], refusals
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and int(exc.response.headers["retry-after"]) >= 1
                assert exc.body["code"] == "server_busy"
                refusals += 1
                assert refusals < 200
                time.sleep(0.05)

    numbers = [7000 + 37 * i for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, numbers))
    assert [n for n, _, _ in answers] == numbers
    for number, extra, _ in answers:  # each answer was computed for its own question
        assert extra["input"] == f"Repeat this number: {number}"
        assert f"Repeat this number: {number}" in extra["stages"][0]["prompt"]
    after = server.health()["models"][model]
    assert after["busy"] == 0 and after["waiting"] == 0
    assert after["answered"] - before["answered"] == 40
    assert after["refused"] - before["refused"] == sum(r for _, _, r in answers)


def test_parallel_requests_share_decodes_and_answer_as_one_at_a_time(tmp_path_factory, smollm2_path):
    """``--parallel 4``: eight questions from eight clients, on F16 weights
    (where batching does not change a greedy answer: test_batched_decoding.py),
    each answered exactly as a lone stack answers it; the decodes were shared."""
    from fslm_edge.engine.tools import quantize_file
    from fslm_edge.stack import Stack

    f16 = tmp_path_factory.mktemp("parallel") / "smollm2-f16.gguf"
    assert quantize_file(smollm2_path, f16, "f16") == 0
    questions = [f"Repeat this number: {7000 + 37 * i}" for i in range(8)]
    with Stack.load(str(f16), {"stack.threads": 1, "*.temperature": 0.0, "*.max_tokens": 8}) as lone:
        expected = [lone.run(q).answer for q in questions]
    running = Server(str(f16), "--parallel", "4", "--queue", "8", "--set", "stack.threads=1")
    try:
        client = running.client(key="unused")
        status = running.health()["models"]["smollm2-f16"]
        assert status["workers"] == 4 and status["batched"]

        def ask(question: str) -> str:
            response = client.chat.completions.create(
                model="smollm2-f16", max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": question}])
            assert response.model_extra["fslm_edge"]["input"] == question
            return response.choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, questions))
        assert answers == expected
        health = running.health()["models"]["smollm2-f16"]
        assert health["largest_batch"] >= 2
        assert health["decoded_rows"] > health["decodes"] > 0  # decodes held several requests on average
    finally:
        running.stop()
    assert running.proc.returncode == 0, "".join(running.log)


def test_a_full_queue_is_503_and_a_slow_request_times_out():
    """One instance, no waiting places, a 1.5 s limit per request."""
    small = Server(BUILTIN, "--workers", "1", "--queue", "0", "--timeout", "1.5", "--set", "stack.threads=1")
    try:
        client = small.client(key="unused")
        long = {"model": "smollm2-135m-instruct", "max_tokens": 1500,
                "messages": [{"role": "user", "content": LONG_STORY}]}
        stream = client.chat.completions.create(**long, stream=True)
        next(iter(stream))  # the only instance is busy now
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"].isdigit()
        with pytest.raises(openai.APIError, match="longer than the server's limit of 1.5 s"):
            for _chunk in stream:  # the stream ends with an error event
                pass
        with pytest.raises(openai.APIStatusError) as slow:
            client.chat.completions.create(**long)
        assert slow.value.status_code == 504 and slow.value.body["code"] == "timeout"
        status = small.health()["models"]["smollm2-135m-instruct"]
        assert status["timed_out"] == 2 and status["refused"] == 1
    finally:
        small.stop()
    assert small.proc.returncode == 0


def test_serve_refuses_bad_input_with_one_line(tmp_path):
    from conftest import write_stack

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from fslm_edge.cli import main; main()", "serve", *args,
                               "--port", "0"], capture_output=True, text=True, timeout=120)

    missing = serve(str(tmp_path / "missing.toml"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "missing.toml" in missing.stderr
    one = write_stack(tmp_path, TWO_STAGES, name="one.toml", threads=1)
    twice = serve(str(one), str(one))
    assert twice.returncode == 2 and "model id 'test' is served already" in twice.stderr.splitlines()[-1]
    assert serve(str(one), "--workers", "0").returncode == 2
    both = serve(str(one), "--workers", "2", "--parallel", "2")
    assert both.returncode == 2 and "give one of them" in both.stderr.splitlines()[-1]
    alone = serve(str(one), "--merge-type", "q4_0")
    assert alone.returncode == 2 and "give --merge-adapters too" in alone.stderr.splitlines()[-1]
    unknown = serve(str(one), "--merge-adapters", "--merge-type", "q4_k_m")
    assert unknown.returncode == 2 and unknown.stderr.splitlines()[-1] == (
        "error: --merge-type must be one of q8_0, q4_0, bf16, not 'q4_k_m'")


def test_only_loopback_hosts_count_as_local():
    from fslm_edge.server.main import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_progress_fields_of_every_event_kind():
    from fslm_edge.events import StageStart, StageWarning
    from fslm_edge.server.responses import progress_extra

    assert progress_extra(StageStart("recall", 0, "the whole prompt", 0)) == {
        "event": "stage_start", "stage": "recall", "index": 0, "sample": 0, "final": False}
    assert progress_extra(StageWarning("answer", "empty")) == {"event": "warning", "stage": "answer",
                                                               "message": "empty"}


# -- pure logic: request parsing and the wait queue ----------------------------------------
def test_chat_parsing_maps_fields_to_the_final_stage():
    wanted = parse_chat({"model": "qa", "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "Why "}, {"type": "text", "text": "so?"}]}],
        "max_tokens": 8, "temperature": 1, "seed": -1, "stop": "\n", "n": 1, "user": "someone",
        "response_format": {"type": "json_object"}})
    assert wanted.question == "Why so?" and wanted.dropped_messages == 3
    assert wanted.final == {"max_tokens": 8, "temperature": 1.0, "seed": 2**32 - 1, "stop": ["\n"]}
    assert wanted.json_schema == {"type": "object"}
    assert parse_completion({"model": "qa", "prompt": ["hi"]}).question == "hi"


@pytest.mark.parametrize("body, param", [
    ({"model": "qa", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"model": "qa", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"model": "qa", "messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
    ({"model": "qa", "messages": [{"role": "user", "content": "x"}], "stop": ["a", ""]}, "stop"),
    ({"model": "qa", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ({"model": "qa", "messages": [{"role": "user", "content": "x", "path": "/etc"}]}, "messages[0].path"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "qa", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
])
def test_chat_parsing_refuses(body, param):
    with pytest.raises(APIError) as caught:
        parse_chat(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_any_json_body_is_parsed_or_refused_with_a_400():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
    fields = st.sampled_from(sorted(CHAT_FIELDS | COMPLETION_FIELDS | {"role", "content", "x"}))
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]),
                                     "content": values | st.text(max_size=8)})
    bodies = st.dictionaries(fields, values, max_size=6).map(
        lambda d: {"model": "m", "messages": [{"role": "user", "content": "q"}], "prompt": "q", **d}) | st.builds(
        lambda extra, messages: {"model": "m", "messages": messages, **extra},
        st.dictionaries(fields, values, max_size=3), st.lists(message, max_size=3))

    @settings(max_examples=300, deadline=None)
    @given(bodies)
    def check(body):
        for parse in (parse_chat, parse_completion):
            try:
                parse(json.loads(json.dumps(body)))
            except APIError as error:
                assert error.status == 400 and error.message

    check()


def test_slot_queue_is_bounded_and_first_come_first_served():
    async def scenario():
        slots = SlotQueue(["a"], max_waiting=2)
        first = await slots.acquire(1)
        waiting = [asyncio.ensure_future(slots.acquire(5)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await slots.acquire(1)
        slots.release(first)
        assert await waiting[0] == "a" and not waiting[1].done()
        waiting[1].cancel()  # a waiter that leaves gives up its place
        await asyncio.sleep(0)
        slots.release("a")
        assert slots.busy == 0 and slots.waiting == 0
        taken = await slots.acquire(1)
        with pytest.raises(QueueTimeout):
            await slots.acquire(0.01)
        slots.release(taken)
        assert await slots.acquire(0.01) == "a"

    asyncio.run(scenario())
