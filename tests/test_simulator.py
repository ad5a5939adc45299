"""The simulator, driven over real HTTP by the real ChatOpenAI client (no mocks)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from enum import Enum
from typing import Any, Literal

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from llmcache.simulator import Simulator, SimulatorConfig, remote_control, remote_stats


class GetWeather(BaseModel):
    """Get the weather forecast for a city."""

    city: str
    days: int = Field(ge=1, le=7)
    unit: Literal["celsius", "fahrenheit"] = "celsius"


class Cuisine(str, Enum):
    ITALIAN = "italian"
    THAI = "thai"


class Ingredient(BaseModel):
    name: str
    grams: float = Field(ge=0)
    optional: bool


class Meal(BaseModel):
    """A nutrition estimate for a meal."""

    name: str
    cuisine: Cuisine
    carbs_g: float = Field(ge=0, le=500)
    servings: int = Field(ge=1)
    ingredients: list[Ingredient]
    tags: list[str]
    note: str | None = None


@pytest.fixture(scope="module")
def sim_server() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(seed=7)) as sim:
        yield sim


@pytest.fixture
def sim(sim_server: Simulator) -> Simulator:
    sim_server.reset_counters()
    sim_server.clear_faults()
    sim_server.set_latency(0.0, per_token_ms=0.0)
    return sim_server


def chat(sim: Simulator, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("max_retries", 0)
    return ChatOpenAI(model="gpt-4o-mini", base_url=sim.base_url, api_key="sim", **kwargs)


def test_invoke_returns_openai_shaped_answer(sim: Simulator) -> None:
    msg = chat(sim).invoke("How many carbs are in a bagel with cream cheese?")
    assert isinstance(msg, AIMessage)
    assert isinstance(msg.content, str)
    assert msg.content.startswith("Estimated for 'How many carbs are in a bagel with cream")
    assert msg.response_metadata["id"].startswith("chatcmpl-")
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["model_name"] == "gpt-4o-mini"
    assert msg.response_metadata["system_fingerprint"].startswith("fp_")
    usage = msg.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] >= 10  # ≈ chars / 4
    assert usage["output_tokens"] >= 20
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert sim.requests == 1
    assert sim.requests_for("bagel") == 1
    assert sim.requests_for("pizza") == 0


def test_answers_are_deterministic_per_request(sim: Simulator) -> None:
    llm = chat(sim)
    first = llm.invoke("Calories in a banana?")
    second = llm.invoke("Calories in a banana?")
    other = llm.invoke("Calories in an apple?")
    assert first.content == second.content
    assert first.response_metadata["id"] != second.response_metadata["id"]
    assert other.content != first.content
    assert chat(sim, temperature=0.5).invoke("Calories in a banana?").content != first.content
    assert sim.requests_for("banana") == 3


async def test_concurrent_ainvoke_against_threaded_server(sim: Simulator) -> None:
    sim.set_latency(50.0)
    # An explicit client, closed here: ChatOpenAI's cached default one would outlive this loop.
    async with openai.DefaultAsyncHttpxClient() as http:
        llm = chat(sim, http_async_client=http)
        start = time.perf_counter()
        results = await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(50)))
        assert time.perf_counter() - start < 2.0  # 50 x 50 ms overlap instead of adding up
    assert all(f"'question {i}'" in str(r.content) for i, r in enumerate(results))
    assert len({r.content for r in results}) == 50
    assert sim.requests == 50
    assert sim.requests_for("question 7") == 1
    assert sim.stats()["max_in_flight"] > 10


async def test_async_context_manager_runs_in_callers_loop() -> None:
    async with (
        Simulator(SimulatorConfig(latency_ms=20)) as sim,
        openai.DefaultAsyncHttpxClient() as http,
    ):
        llm = chat(sim, http_async_client=http)
        start = time.perf_counter()
        results = await asyncio.gather(*(llm.ainvoke(f"q{i}") for i in range(20)))
        elapsed = time.perf_counter() - start
        assert len(results) == 20
        assert sim.requests == 20
        assert elapsed < 1.0  # the 20 ms sleeps overlap instead of adding up


def test_keep_alive_off_survives_several_event_loops() -> None:
    # Same base_url across loops reuses ChatOpenAI's cached async client; no pooled sockets.
    with Simulator(SimulatorConfig(keep_alive=False)) as sim:
        llm = chat(sim)
        for _ in range(2):
            results = asyncio.run(_gather(llm, 3))
            assert len(results) == 3
        assert sim.requests == 6


async def _gather(llm: ChatOpenAI, n: int) -> list[Any]:
    return list(await asyncio.gather(*(llm.ainvoke(f"loop q{i}") for i in range(n))))


def test_n_choices_are_distinct(sim: Simulator) -> None:
    result = chat(sim, n=2).generate([[HumanMessage("Protein in tofu?")]])
    texts = [g.text for g in result.generations[0]]
    assert len(texts) == 2
    assert texts[0] != texts[1]
    assert all("Protein in tofu?" in t for t in texts)
    again = chat(sim, n=2).generate([[HumanMessage("Protein in tofu?")]])
    assert [g.text for g in again.generations[0]] == texts


def test_bind_tools_returns_schema_valid_tool_call(sim: Simulator) -> None:
    llm = chat(sim).bind_tools([GetWeather])
    msg = llm.invoke("Weather in Paris this week?")
    assert isinstance(msg, AIMessage)
    assert msg.content == ""
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    [call] = msg.tool_calls
    assert call["name"] == "GetWeather"
    assert call["id"]
    args = GetWeather.model_validate(call["args"])
    assert 1 <= args.days <= 7
    assert set(call["args"]) == {"city", "days", "unit"}
    # The same request gets the same arguments.
    again = llm.invoke("Weather in Paris this week?")
    assert isinstance(again, AIMessage)
    assert again.tool_calls == msg.tool_calls

    # After the tool result the model answers in text.
    follow_up = llm.invoke(
        [
            HumanMessage("Weather in Paris this week?"),
            msg,
            ToolMessage("sunny, 21 C", tool_call_id=call["id"]),
        ]
    )
    assert isinstance(follow_up, AIMessage)
    assert not follow_up.tool_calls
    assert "Weather in Paris" in str(follow_up.content)
    none_choice = chat(sim).bind_tools([GetWeather], tool_choice="none").invoke("Weather?")
    assert isinstance(none_choice, AIMessage)
    assert not none_choice.tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(
    sim: Simulator, method: Literal["json_schema", "function_calling"]
) -> None:
    llm = chat(sim).with_structured_output(Meal, method=method)
    meal = llm.invoke("Estimate a pad thai")
    assert isinstance(meal, Meal)
    assert meal.ingredients
    assert llm.invoke("Estimate a pad thai") == meal


def test_stream_matches_invoke_and_reports_usage(sim: Simulator) -> None:
    sim.set_latency(0.0, per_token_ms=1.0)
    llm = chat(sim, stream_usage=True)
    chunks = list(llm.stream("Fiber in oatmeal?"))
    assert len(chunks) > 5
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert isinstance(total, AIMessageChunk)
    assert total.content == llm.invoke("Fiber in oatmeal?").content
    assert total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] > 5
    assert total.response_metadata["finish_reason"] == "stop"


def test_stream_tool_calls(sim: Simulator) -> None:
    llm = chat(sim).bind_tools([GetWeather], tool_choice="GetWeather")
    chunks = list(llm.stream("Weather in Rome?"))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert isinstance(total, AIMessageChunk)
    invoked = llm.invoke("Weather in Rome?")
    assert isinstance(invoked, AIMessage)
    assert [c["args"] for c in total.tool_calls] == [c["args"] for c in invoked.tool_calls]


def test_fail_next_raises_then_recovers(sim: Simulator) -> None:
    llm = chat(sim)
    sim.fail_next()
    with pytest.raises(openai.InternalServerError):
        llm.invoke("Sugar in a cola?")
    assert llm.invoke("Sugar in a cola?").content
    assert sim.requests == 2


def test_fail_next_with_match_and_status(sim: Simulator) -> None:
    llm = chat(sim)
    sim.fail_next(1, status=503, match="soup")
    assert llm.invoke("Salt in bread?").content  # does not match: served normally
    with pytest.raises(openai.InternalServerError) as info:
        llm.invoke("Salt in miso soup?")
    assert info.value.status_code == 503
    assert info.value.body == {
        "message": "Simulated error 503.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_rate_limit_is_retried_by_the_client(sim: Simulator) -> None:
    sim.rate_limit_next(1, retry_after=0.05)
    start = time.perf_counter()
    msg = chat(sim, max_retries=2).invoke("Fat in butter?")
    assert msg.content
    assert time.perf_counter() - start >= 0.05
    assert sim.requests == 2
    sim.rate_limit_next(1)
    with pytest.raises(openai.RateLimitError):
        chat(sim).invoke("Fat in butter?")


def test_latency(sim: Simulator) -> None:
    sim.set_latency(200.0)
    start = time.perf_counter()
    chat(sim).invoke("Iron in spinach?")
    assert time.perf_counter() - start >= 0.2


def test_per_token_latency_and_lognormal_spread() -> None:
    config = SimulatorConfig(latency_ms=10, latency_sigma=0.5, per_token_ms=5, completion_tokens=30)
    with Simulator(config) as sim:
        start = time.perf_counter()
        chat(sim).invoke("Zinc in oysters?")
        assert time.perf_counter() - start >= 0.005 * 30


def test_models_and_http_errors(sim: Simulator) -> None:
    with urllib.request.urlopen(f"{sim.base_url}/models", timeout=5) as resp:
        ids = [m["id"] for m in json.loads(resp.read())["data"]]
    assert "gpt-4o-mini" in ids
    bad = urllib.request.Request(f"{sim.base_url}/chat/completions", data=b"{", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=5)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"
    info.value.close()
    with pytest.raises(urllib.error.HTTPError) as control_error:
        remote_control(sim.base_url, explode=True)
    control_error.value.close()


def test_base_url_requires_start() -> None:
    with pytest.raises(RuntimeError):
        _ = Simulator().base_url


def test_remote_stats_and_control_against_subprocess() -> None:
    code = (
        "from llmcache.simulator import run_forever, SimulatorConfig; "
        "run_forever(SimulatorConfig(), '127.0.0.1', 0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.removeprefix("listening on ")
        assert base_url.endswith("/v1")
        llm = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key="sim", max_retries=0)
        llm.invoke("Remote calories?")
        stats = remote_stats(base_url)
        assert stats["requests"] == 1
        assert stats["by_prompt"] == {"Remote calories?": 1}

        remote_control(base_url, fail_next=1, status=500, match="boom")
        llm.invoke("Remote calories?")  # does not match
        with pytest.raises(openai.InternalServerError):
            llm.invoke("boom?")
        remote_control(base_url, rate_limit_next=1, retry_after=0.01)
        with pytest.raises(openai.RateLimitError):
            llm.invoke("Remote calories?")
        assert remote_stats(base_url)["requests"] == 4
        remote_control(base_url, reset=True, latency_ms=50)
        assert remote_stats(base_url)["requests"] == 0
        start = time.perf_counter()
        llm.invoke("slow?")
        assert time.perf_counter() - start >= 0.05
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
