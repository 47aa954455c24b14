"""The node's generation series: time to first token and decoding speed, per model."""

from __future__ import annotations

from prometheus_client import REGISTRY

from koprogo_node.adapters.inference import FakeInferenceEngine
from tests.unit.test_edge_inference_service import MODEL, service, work


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": MODEL}) or 0.0


async def test_an_answer_observes_its_first_token_after_its_delay_and_its_decoding_speed() -> None:
    # The fake answers after `delay_s` (the prompt), then one word per `delay_per_word_s`.
    engine = FakeInferenceEngine(reply="un deux trois quatre cinq", delay_s=0.2, delay_per_word_s=0.05)
    await engine.load()
    node, _ = service(engine)
    first_count = _sample("koprogo_node_time_to_first_token_seconds_count")
    first_sum = _sample("koprogo_node_time_to_first_token_seconds_sum")
    speeds = _sample("koprogo_node_generation_tokens_per_second_count")
    speed_sum = _sample("koprogo_node_generation_tokens_per_second_sum")

    await node.run(work(stream=True))

    assert _sample("koprogo_node_time_to_first_token_seconds_count") == first_count + 1
    assert 0.2 <= _sample("koprogo_node_time_to_first_token_seconds_sum") - first_sum < 0.4
    assert _sample("koprogo_node_generation_tokens_per_second_count") == speeds + 1
    # Four words after the first in about 5 x 0.05 s: some 16 tokens/s (a slow machine: fewer).
    assert 4 < _sample("koprogo_node_generation_tokens_per_second_sum") - speed_sum < 25
