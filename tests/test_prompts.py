"""Prompt strategies: the worked-example pool, requests, constrained output, and reading JSON replies."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sweep.correctness.prompts import OUTPUTS, answer_text, grammar_for, max_shots, request_for, schema_for, shot_pool
from sweep.correctness.tasks import load_tasks, score


def test_worked_examples_are_never_scored_items() -> None:
    tasks = load_tasks()
    pool = [t for kind in shot_pool().values() for t in kind]
    assert {t.id for t in pool}.isdisjoint({t.id for t in tasks})
    scored_inputs = {t.input for t in tasks}
    assert not [t.id for t in pool if t.input in scored_inputs]
    kinds = ("verdict", "iocs", "attack", "severity", "mcq", "cwe")
    assert Counter(t.kind for t in pool) == {k: max_shots() for k in kinds}


def test_worked_examples_cover_different_labels() -> None:
    # Examples that all share one label would teach the model a constant answer.
    for kind in ("verdict", "severity", "mcq"):
        labels = [t.expected for t in shot_pool()[kind]]
        assert len(set(labels)) == len(labels), kind


@pytest.mark.parametrize("output", OUTPUTS)
def test_k_shot_request_puts_k_worked_examples_before_the_question(output: str) -> None:
    task = next(t for t in load_tasks() if t.kind == "attack")
    zero, three = request_for(task, 0, output), request_for(task, 3, output)
    assert [m["role"] for m in zero["messages"]] == ["system", "user"]
    assert [m["role"] for m in three["messages"]] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert three["messages"][-1] == zero["messages"][-1]
    assert task.input in zero["messages"][-1]["content"]
    examples = shot_pool()["attack"]
    replies = [m["content"] for m in three["messages"] if m["role"] == "assistant"]
    if output == "json":
        assert [json.loads(r)["answer"] for r in replies] == [e.expected for e in examples]
    else:
        assert replies == ["\n".join(e.expected) for e in examples]
    # A worked example's own answer scores full marks through the same path as the model's.
    for example, reply in zip(examples, replies):
        assert score(example, answer_text(reply, output)).value == 1.0


def test_each_output_constrains_the_answer_its_own_way() -> None:
    task = next(t for t in load_tasks() if t.kind == "verdict")
    assert "grammar" not in request_for(task) and "response_format" not in request_for(task)
    assert request_for(task, output="grammar")["grammar"] == 'root ::= "malicious" | "suspicious" | "benign"'
    fmt = request_for(task, output="json")["response_format"]
    assert fmt == {"type": "json_object", "schema": schema_for("verdict")}
    assert schema_for("verdict")["properties"]["answer"]["enum"] == ["malicious", "suspicious", "benign"]
    assert grammar_for("mcq") == 'root ::= "A" | "B" | "C" | "D"'


def test_json_replies_are_read_before_scoring() -> None:
    tasks = {t.id: t for t in load_tasks()}
    verdict, iocs = tasks["v01"], tasks["i03"]
    assert score(verdict, answer_text('{"answer": "malicious"}', "json")).value == 1.0
    both = json.dumps({"answer": iocs.expected})
    assert score(iocs, answer_text(both, "json")).value == 1.0
    # Cut short by max_tokens, or the wrong shape: a parse failure, not a wrong answer.
    for broken in ('{"answer": "malic', '{"verdict": "malicious"}', '["malicious"]', '{"answer": 3}'):
        result = score(verdict, answer_text(broken, "json"))
        assert (result.value, result.parsed) == (0.0, False), broken
    assert answer_text("free text stays as it is", "grammar") == "free text stays as it is"


def _run(model_path, tasks, output: str, max_tokens: int, model: str = "smollm2-135m", quant: str = "Q4_1"):
    from sweep.records import TrialConfig, TrialSettings
    from sweep.trial.runner import run_trial

    config = TrialConfig(model=model, quant=quant, model_path=str(model_path), chat_format=None,
                         n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, n_ctx=1024,
                         max_tokens=max_tokens, output=output)
    settings = TrialSettings(prompts=len(tasks), idle_seconds=0, baseline_seconds=0.1, probe=False, early_abort=False,
                             noise_retries=0, timeout_seconds=900, progress_timeout_seconds=300)
    return run_trial(config, settings, tasks)


@pytest.mark.slow
def test_smollm2_with_a_grammar_gives_a_parseable_answer_to_every_item(smollm2_path) -> None:
    from sweep.correctness.tasks import stratified_subset

    tasks = stratified_subset(load_tasks(), 10)
    assert {t.kind for t in tasks} == {"verdict", "iocs", "attack", "severity", "mcq"}
    outcome = _run(smollm2_path, tasks, "grammar", 96)
    assert outcome.ok, (outcome.reason, outcome.detail)
    assert [(a["id"], a["answer"]) for a in outcome.answers if not a["parsed"]] == []
    assert outcome.figures["parse_failures"] == 0


@pytest.mark.slow
def test_smollm2_answers_in_json_for_every_kind(smollm2_path) -> None:
    from sweep.correctness.tasks import stratified_subset

    # One item of each kind; the attack schema's pattern once made llama.cpp reject the grammar and crash.
    outcome = _run(smollm2_path, stratified_subset(load_tasks(), 5), "json", 96)
    assert outcome.ok, (outcome.reason, outcome.detail)
    assert len(outcome.answers) == 5
    # A label is a few tokens, so its JSON is always complete; a list can run into max_tokens.
    for a in outcome.answers:
        if a["kind"] in ("verdict", "severity", "mcq"):
            labels = schema_for(a["kind"])["properties"]["answer"]["enum"]
            assert a["parsed"] and json.loads(a["answer"])["answer"] in labels, a


@pytest.mark.slow
def test_the_qwen_model_with_a_grammar_parses_on_every_item(cache_dir) -> None:
    """The 1.5B model, the one bundled model that beats a constant answer, on a stratified subset:
    every answer has the scorer's form."""
    from sweep.correctness.tasks import stratified_subset
    from sweep.models.registry import Registry

    tasks = stratified_subset(load_tasks(), 5)
    path = Registry().resolve("qwen2.5-coder-1.5b", "Q4_K_M").path
    outcome = _run(path, tasks, "grammar", 32, model="qwen2.5-coder-1.5b", quant="Q4_K_M")
    assert outcome.ok, (outcome.reason, outcome.detail)
    assert [(a["id"], a["answer"]) for a in outcome.answers if not a["parsed"]] == []


@pytest.mark.slow
def test_a_shared_prefix_gives_the_same_answers_and_still_prefills_every_item(smollm2_path) -> None:
    """prefix_cache: shared against off, 3-shot, on SmolLM2: the same answers, and llama.cpp's own
    count of prefilled tokens shows every item prefilled fresh (more than nothing, less than the
    whole prompt), where off prefills the whole prompt each time."""
    from sweep.correctness.tasks import stratified_subset
    from sweep.records import TrialConfig, TrialSettings
    from sweep.trial.runner import run_trial

    tasks = stratified_subset(load_tasks(), 5)
    settings = TrialSettings(prompts=5, idle_seconds=0, baseline_seconds=0.1, probe=False, early_abort=False,
                             noise_retries=0)
    runs = {}
    for mode in ("off", "shared"):
        config = TrialConfig(model="smollm2-135m", quant="Q4_1", model_path=str(smollm2_path), chat_format=None,
                             n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, n_ctx=2048, max_tokens=24,
                             shots=3, output="grammar", prefix_cache=mode)
        outcome = run_trial(config, settings, tasks)
        assert outcome.ok, (mode, outcome.reason, outcome.detail)
        runs[mode] = outcome
    assert [a["answer"] for a in runs["shared"].answers] == [a["answer"] for a in runs["off"].answers]
    off, shared = runs["off"].answers, runs["shared"].answers
    for o, s in zip(off, shared):
        assert o["prompt_tokens"] == s["prompt_tokens"]
        assert o["prefill_tokens"] >= o["prompt_tokens"] - 1  # cold: the whole prompt
        assert 0 < s["prefill_tokens"] < s["prompt_tokens"] // 2  # only the item and its lead-in


def test_ioc_hints_show_the_regex_candidates_on_ioc_items_only() -> None:
    from sweep.correctness.tasks import ioc_candidates

    ioc = next(t for t in load_tasks() if t.kind == "iocs" and ioc_candidates(t.input))
    verdict = next(t for t in load_tasks() if t.kind == "verdict")
    hinted = request_for(ioc, 3, "grammar", hints="regex")["messages"]
    assert all(c in hinted[-1]["content"] for c in ioc_candidates(ioc.input))
    assert "A pattern match found" in hinted[1]["content"]  # the worked examples are asked the same way
    assert "A pattern match found" not in request_for(ioc, 3, "grammar")["messages"][-1]["content"]
    assert request_for(verdict, 0, hints="regex") == request_for(verdict, 0)


def test_the_attack_catalog_puts_retrieved_techniques_in_the_prompt() -> None:
    import re

    from sweep.correctness.catalog import retrieve, techniques

    assert len(techniques()) > 600 and all(re.fullmatch(r"T\d{4}(\.\d{3})?", t["id"]) for t in techniques())
    lsass = next(t for t in load_tasks() if t.kind == "attack" and "lsass" in t.input)
    assert "T1003.001" in [t["id"] for t in retrieve(lsass.input, 5)]  # LSASS Memory, by BM25 on the catalog
    asked = request_for(lsass, 0, "grammar", context="attack-catalog", context_k=4)["messages"][-1]["content"]
    listed = re.findall(r"^(T\d{4}(?:\.\d{3})?) ", asked, re.M)
    assert len(listed) == 4 and "T1003.001" in listed
    mcq = next(t for t in load_tasks() if t.kind == "mcq")
    assert request_for(mcq, 0, context="attack-catalog") == request_for(mcq, 0)
