"""Server faults: the openai backend through a fault-injecting proxy (``fault_proxy.py``).

With 30% of completion requests failing (429 with Retry-After, 500, 503, truncated JSON,
answers slower than the client's timeout, dropped connections), a stage must end with every
row either done or marked failed with its reason, never crash, retry each request a bounded
number of times and say so in its manifest, and on a rerun send requests only for the rows
that failed. The proxy counts every request, so these are checked from the outside.

The fast tests run against a tiny deterministic OpenAI-compatible server started in-process
(so the guarantee is checked where vLLM is absent); the ``slow`` one against ``vllm serve``.
Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mipo_engine.artifacts.store import is_complete, read_manifest
from mipo_engine.backends.openai import OpenAIBackend
from mipo_engine.stages.generate import GenerateConfig, GenerationFailed, run_generate
from mipo_engine.stages.ingest import IngestConfig, run_ingest
from mipo_engine.stages.judge import JudgeConfig, run_judge
from tests.helpers.vllm_server import VLLMServer, vllm_server  # noqa: F401 (a fixture)
from tests.reliability.fault_proxy import (
    FAKE_MODEL,
    FakeOpenAIServer,
    FaultProxy,
    FaultRates,
    fake_reply,
    fault_proxy,
)

FAULT_RATE = 0.3
MAX_RETRIES = 1
"""Backend retries per request: at most 1 + MAX_RETRIES requests per row and stage attempt."""
TIMEOUT_S = 2.0
SLOW_S = 2.5
"""Slow answers come after SLOW_S > TIMEOUT_S: the client has given up by then."""
PROXY_SEED = 2

# How the backend names each injected fault in its stats (backends/openai.py classify_error).
BACKEND_KIND = {
    "rate_limit": "rate_limit",
    "server_error": "server_error",
    "unavailable": "server_error",
    "truncated": "malformed_response",
    "slow": "timeout",
    "drop": "connection",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with FakeOpenAIServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 built-in personalization prompts: 40 pairs, 80 generation requests."""
    out = tmp_path_factory.mktemp("faults") / "prompts.parquet"
    return run_ingest(IngestConfig(inputs=["builtin:personalization-train"], out=out, limit=40))


def make_backend(
    base_url: str, *, model: str = FAKE_MODEL, timeout: float = TIMEOUT_S
) -> OpenAIBackend:
    return OpenAIBackend(
        model,
        base_url=base_url,
        timeout=timeout,
        max_retries=MAX_RETRIES,
        retry_backoff=0.01,
        concurrency=16,
        show_progress=False,
    )


def generate_config(
    prompts: Path, out: Path, base_url: str, *, model: str = FAKE_MODEL, **extra: Any
) -> GenerateConfig:
    return GenerateConfig(
        prompts=prompts,
        out=out,
        backend="openai",
        model=model,
        base_url=base_url,
        max_new_tokens=8,
        chunk_pairs=40,
        seed=5,
        **extra,
    )


@pytest.fixture(scope="module")
def reference(prompts: Path, upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same generate run straight to the upstream, without faults."""
    out = tmp_path_factory.mktemp("faults-reference") / "generations.parquet"
    return run_generate(generate_config(prompts, out, upstream), backend=make_backend(upstream))


def _journal_ids(out: Path) -> set[str]:
    parts = sorted(out.with_name(out.name + ".parts").glob("part-*.parquet"))
    return set(pl.concat([pl.read_parquet(p) for p in parts])["id"]) if parts else set()


def _assert_bounded(proxy: FaultProxy) -> None:
    """No row's request was sent more than 1 + MAX_RETRIES times within one stage attempt."""
    worst = max(proxy.requests_per_key().values())
    assert worst <= 1 + MAX_RETRIES, f"a request was sent {worst} times"


def _proxy_retries(proxy: FaultProxy) -> int:
    return sum(count - 1 for count in proxy.requests_per_key().values())


def run_until_complete(
    config: GenerateConfig,
    make: Callable[[], OpenAIBackend],
    proxy: FaultProxy,
    planned: set[str],
    *,
    max_runs: int = 6,
) -> list[Counter[str]]:
    """Run generate through ``proxy`` and rerun it (same command) until the artifact is
    complete. After a failed run: one clear error, no artifact, the finished pairs kept; the
    next run asks the server only for the failed pairs (two completions each). Requests per
    row stay bounded in every run. Returns the faults injected in each run."""
    faults_per_run: list[Counter[str]] = []
    failed: set[str] | None = None
    for _ in range(max_runs):
        proxy.reset_records()
        try:
            run_generate(config, backend=make())
        except GenerationFailed as error:
            assert "rerun the same command" in str(error)
            assert not is_complete(config.out) and not config.out.exists()
        faults_per_run.append(proxy.faults())
        requests = len(proxy.completion_records())
        print(
            f"\n[server-faults] run {len(faults_per_run)}: {requests} completion requests, "
            f"{sum(faults_per_run[-1].values())} faulted {dict(faults_per_run[-1])}"
        )
        _assert_bounded(proxy)
        if failed is not None:
            asked = len(proxy.requests_per_key())
            assert asked == 2 * len(failed), f"asked for {asked} completions, {len(failed)} failed"
        if is_complete(config.out):
            return faults_per_run
        still_failed = planned - _journal_ids(config.out)
        print(f"[server-faults] {len(still_failed)} of {len(planned)} pairs failed after retries")
        assert still_failed, "the run failed although every pair is in the journal"
        assert failed is None or still_failed <= failed, "a done pair was lost"
        failed = still_failed
    raise AssertionError(f"rows still failing after {max_runs} runs: {sorted(failed or ())}")


# ---------------------------------------------------------------------------------------------
# The proxy itself
# ---------------------------------------------------------------------------------------------


def _post(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


CHAT_BODY = json.dumps({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(
    ("kind", "status"),
    [("rate_limit", 429), ("server_error", 500), ("unavailable", 503), (None, 200)],
)
def test_proxy_answers_errors_or_forwards(upstream: str, kind: str | None, status: int) -> None:
    rates = FaultRates.only(kind) if kind else FaultRates()
    with fault_proxy(upstream, rates=rates, retry_after_s=7) as proxy:
        got, headers, payload = _post(proxy.url, CHAT_BODY.encode())
    assert got == status
    if status in (429, 503):
        assert headers["Retry-After"] == "7"
    if status == 200:
        content = json.loads(payload)["choices"][0]["message"]["content"]
        assert content == fake_reply(json.loads(CHAT_BODY))


def test_proxy_truncates_drops_and_delays(upstream: str) -> None:
    with fault_proxy(upstream, rates=FaultRates.only("truncated")) as proxy:
        status, _, payload = _post(proxy.url, CHAT_BODY.encode())
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(payload)
    with (
        fault_proxy(upstream, rates=FaultRates.only("drop")) as proxy,
        pytest.raises((http.client.RemoteDisconnected, ConnectionError)),
    ):
        _post(proxy.url, CHAT_BODY.encode())
    with (
        fault_proxy(upstream, rates=FaultRates.only("slow"), slow_s=1.0) as proxy,
        pytest.raises(TimeoutError),
    ):
        _post(proxy.url, CHAT_BODY.encode(), timeout=0.3)


def test_fault_draws_are_seeded_per_body_and_hit_the_rate() -> None:
    """2000 distinct bodies at 30%: the share of faults is 0.3 within 3 standard errors
    (sqrt(0.3 * 0.7 / 2000) = 0.0102), each kind about 5%; the same seed and body give the
    same fault again, whatever else was asked in between."""
    rates = FaultRates.evenly(FAULT_RATE)
    first = FaultProxy("http://127.0.0.1:9/v1", rates=rates, seed=3)
    picks = [first.decide("/v1/chat/completions", f"body {i}".encode())[2] for i in range(2000)]
    assert abs(sum(p is not None for p in picks) / 2000 - FAULT_RATE) < 3 * 0.0102
    kinds = Counter(pick for pick in picks if pick is not None)
    assert len(kinds) == 6 and all(abs(n / 2000 - FAULT_RATE / 6) < 0.02 for n in kinds.values())
    second = FaultProxy("http://127.0.0.1:9/v1", rates=rates, seed=3)
    again = [second.decide("/v1/chat/completions", f"body {i}".encode())[2] for i in (7, 3, 1999)]
    assert again == [picks[7], picks[3], picks[1999]]
    assert first.decide("/v1/models", b"")[2] is None  # only completion paths are disturbed


@pytest.mark.parametrize(
    "upstream_url", ["http://10.0.0.1:8000/v1", "https://127.0.0.1/v1", "http://example.com/v1"]
)
def test_proxy_refuses_an_upstream_off_the_loopback(upstream_url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(upstream_url)


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="must be in"):
        FaultRates(slow=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        FaultRates(slow=0.6, drop=0.6)


# ---------------------------------------------------------------------------------------------
# Stages through the proxy
# ---------------------------------------------------------------------------------------------


def test_generate_at_30_percent_faults_fails_rows_cleanly_and_reruns_only_them(
    prompts: Path, upstream: str, reference: Path, tmp_path: Path
) -> None:
    """First run: some rows fail after their retries; the stage stops with one clear error,
    keeps the finished pairs and makes no artifact. Each rerun (same faults) asks the server
    only for the failed pairs' two completions. The end result equals the fault-free run."""
    out = tmp_path / "generations.parquet"
    planned = set(pl.read_parquet(reference)["id"])
    with fault_proxy(
        upstream, rates=FaultRates.evenly(FAULT_RATE), seed=PROXY_SEED, slow_s=SLOW_S
    ) as proxy:
        config = generate_config(prompts, out, proxy.url)
        faults = run_until_complete(config, lambda: make_backend(proxy.url), proxy, planned)
    assert len(faults) >= 2, "the seed should make some rows fail in the first run"
    assert set(faults[0]) == set(BACKEND_KIND), f"every kind of fault should occur: {faults[0]}"
    final = pl.read_parquet(out)
    assert final["id"].n_unique() == final.height == len(planned)
    assert final.equals(pl.read_parquet(reference))
    print(
        f"\n[server-faults] generate: faults per run {[dict(f) for f in faults]}; "
        f"{len(planned)} pairs, {len(faults) - 1} rerun(s), 0 lost, 0 duplicated"
    )


def test_allow_failures_lists_each_failed_row_with_its_reason_and_counts_retries(
    prompts: Path, upstream: str, reference: Path, tmp_path: Path
) -> None:
    """With --allow-failures the artifact holds the done rows; the manifest lists every
    failed row with its reason, and its retry and error counts equal what the proxy saw."""
    out = tmp_path / "generations.parquet"
    planned = set(pl.read_parquet(reference)["id"])
    with fault_proxy(
        upstream, rates=FaultRates.evenly(FAULT_RATE), seed=PROXY_SEED, slow_s=SLOW_S
    ) as proxy:
        backend = make_backend(proxy.url)
        run_generate(generate_config(prompts, out, proxy.url, allow_failures=True), backend=backend)
    stats = read_manifest(out)["stats"]
    done = set(pl.read_parquet(out)["id"])
    failed = {row["id"]: row["reason"] for row in stats["failed"]}
    assert done | set(failed) == planned and not done & set(failed)
    assert failed and all(reason.strip() for reason in failed.values())
    # Done rows are exactly the fault-free rows.
    expected = pl.read_parquet(reference).filter(pl.col("id").is_in(list(done)))
    assert pl.read_parquet(out).equals(expected)
    backend_stats = stats["backend_stats"]
    assert backend_stats["retries"] == _proxy_retries(proxy)
    assert backend_stats["requests"] == len(proxy.requests_per_key()) == 2 * len(planned)
    # Every injected fault is counted under its kind. (On a loaded machine an ordinary answer
    # can also miss the timeout: the backend then counts a timeout the proxy did not inject.)
    errors = backend_stats["errors"]
    injected = proxy.faults()
    assert {BACKEND_KIND[kind] for kind in injected} <= set(errors)
    assert sum(errors.values()) >= sum(injected.values())
    assert sum(errors.values()) == backend_stats["retries"] + backend_stats["failures"]
    _assert_bounded(proxy)


def test_rerun_after_allow_failures_asks_only_for_the_failed_rows(
    prompts: Path, upstream: str, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "generations.parquet"
    with fault_proxy(
        upstream, rates=FaultRates.evenly(FAULT_RATE), seed=PROXY_SEED, slow_s=SLOW_S
    ) as proxy:
        config = generate_config(prompts, out, proxy.url, allow_failures=True)
        run_generate(config, backend=make_backend(proxy.url))
        failed = read_manifest(out)["stats"]["failed"]
        proxy.reset_records()
        run_generate(config, backend=make_backend(proxy.url))
        assert len(proxy.requests_per_key()) == 2 * len(failed)


def test_judge_at_30_percent_faults_gives_every_item_a_score_or_a_reason(
    upstream: str, reference: Path, tmp_path: Path
) -> None:
    """rlaif judging of 80 responses through the faulty proxy: the stage finishes, every
    judgment has a score or the reason it has none, and attempts stay within max_attempts."""
    out = tmp_path / "judgments.parquet"
    with fault_proxy(
        upstream, rates=FaultRates.evenly(FAULT_RATE), seed=PROXY_SEED, slow_s=SLOW_S
    ) as proxy:
        config = JudgeConfig(
            responses=reference,
            out=out,
            mode="rlaif",
            backend="openai",
            model=FAKE_MODEL,
            base_url=proxy.url,
            max_attempts=2,
            max_new_tokens=16,
        )
        run_judge(config, backend=make_backend(proxy.url))
        _assert_bounded(proxy)
        faults = sum(proxy.faults().values())
    judged = pl.read_parquet(out)
    assert judged.height == 2 * pl.read_parquet(reference).height
    assert judged.filter(pl.col("score").is_null() & pl.col("error").is_null()).height == 0
    assert judged["attempts"].max() <= 2
    assert faults > 0 and judged["score"].null_count() < judged.height


# ---------------------------------------------------------------------------------------------
# The same against vllm serve
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_through_faults_against_vllm_serve(
    vllm_server: VLLMServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """16 pairs from the real server at 30% faults: every row done or failed, bounded retries,
    reruns ask only for the failed rows, and the end artifact has every pair exactly once."""
    prompts = run_ingest(
        IngestConfig(inputs=["builtin:personalization-train"], out=tmp_path / "p.parquet", limit=16)
    )
    planned = set(pl.read_parquet(prompts)["id"])  # one pair per prompt, same id
    out = tmp_path / "generations.parquet"
    # Real generations take seconds on a loaded CPU: the timeout must exceed them, and "slow"
    # faults answer after it.
    timeout = 60.0
    with fault_proxy(
        vllm_server.base_url,
        rates=FaultRates.evenly(FAULT_RATE),
        seed=PROXY_SEED,
        slow_s=timeout + 1.0,
    ) as proxy:
        config = generate_config(prompts, out, proxy.url, model=vllm_server.model)
        faults = run_until_complete(
            config,
            lambda: make_backend(proxy.url, model=vllm_server.model, timeout=timeout),
            proxy,
            planned,
        )
    final = pl.read_parquet(out)
    assert final.height == len(planned) and set(final["id"]) == planned
    assert set(final["chosen_finish_reason"]) <= {"stop", "length"}
    print(f"\n[server-faults] vllm serve: faults per run {[dict(f) for f in faults]}")
