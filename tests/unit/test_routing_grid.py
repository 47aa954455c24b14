"""The grid as a third target for chats: which `auto` chats go there, and how it is ordered.

The long chats are real documents (the fixture's French minutes, a Dutch notice and an
English letter written here), measured in characters as the dispatcher measures them.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import pytest

from koprogo_router.adapters.bus import FakeBus
from koprogo_router.service_layer.dispatch import Dispatcher
from koprogo_shared import chat_outcomes, subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from koprogo_shared.co2 import CloudFootprint
from koprogo_shared.events import (
    ChatMessage,
    ChatRequested,
    InferenceAttemptFailed,
    RoutingPolicyName,
    RoutingPreference,
    RunInference,
    derived_event_id,
    new_event_id,
    utc_now,
)
from koprogo_shared.node_registry import CloudCandidate, EdgeCandidate, NodeRegistry
from koprogo_shared.routing.choice import GridRule, Refusal, Route, RoutingRequest, choose_target
from koprogo_shared.routing.decision import default_catalogue
from koprogo_shared.routing.policy import EffectivePolicy, edge_pools
from koprogo_shared.routing.policy_book import FakePolicyBook
from tests.unit.test_node_registry import beat

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
MINUTES_FR = (FIXTURES / "pv-ag-2025-les-tilleuls.txt").read_text(encoding="utf-8")
# Written for these tests: another building, another language.
NOTICE_NL = (
    "Residentie De Linde, Gent. Verslag van de algemene vergadering van 12 maart 2025. "
    "Aanwezig of vertegenwoordigd: 14 van de 18 eigenaars, samen 7 420 van de 10 000 aandelen. "
    "Punt 1: de rekeningen van 2024 worden goedgekeurd met 7 020 stemmen voor en 400 onthoudingen. "
    "Punt 2: de vervanging van de lift (offerte Schindler, 48 300,00 EUR btw inbegrepen) wordt "
    "goedgekeurd met een meerderheid van twee derden. Punt 3: de gevelrenovatie wordt besproken "
    "maar niet gestemd; de syndicus vraagt drie nieuwe offertes. "
) * 6
RULE = GridRule(min_prompt_chars=2000, min_max_tokens=1024)
PREFER_EDGE = EffectivePolicy("prefer_edge", None, True)
GRID_TASKS = frozenset({"summarize_meeting", "translate_document"})


def node(
    node_id: str,
    *,
    grid: bool = False,
    in_flight: int = 0,
    intensity: float = 150.0,
    pools: frozenset[str] = frozenset({subjects.SHARED_POOL}),
    models: tuple[str, ...] = (BUNDLED_MODEL_ID,),
) -> EdgeCandidate:
    return EdgeCandidate(
        node_id,
        models,
        in_flight,
        1,
        20.0,
        7.0,
        intensity,
        False,
        0.0,
        pools=pools,
        task_types=GRID_TASKS if grid else frozenset(),
    )


def cloud() -> CloudCandidate:
    return CloudCandidate(
        "openai", "openai", ("gpt-4o-mini",), True, None, CloudFootprint(1.0, 300.0), 800.0, "eu"
    )


def policy(name: RoutingPolicyName, *, own_nodes_only: bool = False) -> EffectivePolicy:
    return EffectivePolicy(name, None, True, own_nodes_only)


def decide(
    model: str,
    prompt: str,
    nodes: list[EdgeCandidate],
    *,
    chosen: EffectivePolicy = PREFER_EDGE,
    max_tokens: int | None = None,
    pools: tuple[str, ...] = (subjects.SHARED_POOL,),
    rule: GridRule | None = RULE,
) -> Route | Refusal:
    request = RoutingRequest(model, chosen, max_tokens, pools=pools, prompt_chars=len(prompt))
    return choose_target(request, nodes, [cloud()], default_catalogue(), rule)


def kinds(decision: Route | Refusal) -> list[str]:
    assert isinstance(decision, Route), decision
    return [t.kind for t in decision.targets]


def test_a_long_auto_chat_goes_to_the_grid_first_then_the_edge_pool_then_the_cloud() -> None:
    decision = decide("auto", MINUTES_FR, [node("pi-grid", grid=True), node("pi-chat")])
    assert kinds(decision) == ["grid", "edge", "cloud"]
    assert isinstance(decision, Route)
    grid = decision.targets[0]
    assert grid.node_ids == ("pi-grid",) and grid.model == BUNDLED_MODEL_ID and grid.pool is None
    # The interactive pool keeps every node (a grid node serves short chats too).
    assert decision.targets[1].node_ids == ("pi-chat", "pi-grid")
    assert decision.reason.startswith(f"prefer_edge, long chat (prompt of {len(MINUTES_FR)} chars >= 2000)")
    assert "the grid before the interactive edge pools" in decision.reason
    assert "grid [pi-grid]" in decision.reason


def test_a_long_answer_asked_for_is_a_long_chat_too() -> None:
    decision = decide(
        "auto", "Traduis le règlement de copropriété en néerlandais.", [node("g", grid=True)], max_tokens=1024
    )
    assert kinds(decision)[0] == "grid"
    assert isinstance(decision, Route) and "max_tokens 1024 >= 1024" in decision.reason
    shorter = decide("auto", "Traduis le règlement.", [node("g", grid=True)], max_tokens=1023)
    assert "grid" not in kinds(shorter)


def test_the_prompt_threshold_is_inclusive_and_one_char_less_is_a_short_chat() -> None:
    text = NOTICE_NL[:2000]
    assert kinds(decide("auto", text, [node("g", grid=True)]))[0] == "grid"
    assert "grid" not in kinds(decide("auto", text[:-1], [node("g", grid=True)]))


def test_a_short_auto_chat_stays_on_the_edge_pool_and_never_lists_the_grid() -> None:
    decision = decide("auto", "Quand a lieu la prochaine AG ?", [node("g", grid=True), node("pi")])
    assert kinds(decision) == ["edge", "cloud"]
    assert isinstance(decision, Route) and decision.reason.startswith("prefer_edge: ")


def test_edge_only_never_sends_a_long_chat_to_the_grid() -> None:
    nodes = [node("g", grid=True)]
    asked = decide("auto", MINUTES_FR, nodes, chosen=policy("edge_only"), pools=("copro-c1", "shared"))
    assert kinds(asked) == ["edge"]
    assert isinstance(asked, Route) and "long chat" not in asked.reason
    own_only = policy("edge_only", own_nodes_only=True)
    copro_grid_node = node("own", grid=True, pools=frozenset({"copro-c1"}))
    kept = decide("auto", MINUTES_FR, [copro_grid_node], chosen=own_only, pools=edge_pools("c1", own_only))
    assert kinds(kept) == ["edge"]
    assert isinstance(kept, Route) and kept.targets[0].pool == "copro-c1"


def test_an_explicit_model_id_never_goes_to_the_grid_however_long() -> None:
    decision = decide(BUNDLED_MODEL_ID, MINUTES_FR, [node("g", grid=True)], max_tokens=4096)
    assert kinds(decision) == ["edge"]


def test_without_a_live_grid_node_a_long_chat_runs_on_the_edge_pool() -> None:
    decision = decide("auto", MINUTES_FR, [node("pi")])
    assert kinds(decision) == ["edge", "cloud"]
    assert isinstance(decision, Route) and "long chat" not in decision.reason


def test_a_copros_own_node_in_the_grid_takes_no_grid_chat() -> None:
    # Grid chats come from any copro: a copro's own node works for that copro alone.
    own = node("own", grid=True, pools=frozenset({"copro-c2"}))
    decision = decide("auto", MINUTES_FR, [own, node("pi")], pools=("copro-c2", "shared"))
    assert kinds(decision) == ["edge", "edge", "cloud"]


def test_a_grid_node_serving_a_later_model_of_the_class_still_takes_the_long_chat() -> None:
    llama = "llama3:8b-instruct-q4"
    decision = decide("auto", NOTICE_NL, [node("big", grid=True, models=(llama,)), node("pi")])
    assert isinstance(decision, Route)
    assert [(t.kind, t.model) for t in decision.targets] == [
        ("grid", llama),
        ("edge", BUNDLED_MODEL_ID),
        ("edge", llama),
        ("cloud", "gpt-4o-mini"),
    ]


def test_lowest_carbon_ranks_the_grid_by_grams_and_puts_it_first_on_a_tie() -> None:
    dirty_grid = node("coal", grid=True, intensity=900.0)
    clean = node("clean", intensity=20.0)
    decision = decide("auto", MINUTES_FR, [dirty_grid, clean], chosen=policy("lowest_carbon"))
    assert isinstance(decision, Route)
    assert [(t.kind, t.node_ids[:1]) for t in decision.targets[:2]] == [
        ("edge", ("clean",)),
        ("grid", ("coal",)),
    ]
    tie = decide("auto", MINUTES_FR, [node("g", grid=True)], chosen=policy("lowest_carbon"))
    assert kinds(tie) == ["grid", "edge", "cloud"]
    assert isinstance(tie, Route) and "first on a tie" in tie.reason


def test_fastest_ranks_a_busy_grid_node_after_an_idle_edge_node() -> None:
    decision = decide(
        "auto", MINUTES_FR, [node("busy", grid=True, in_flight=1), node("idle")], chosen=policy("fastest")
    )
    assert isinstance(decision, Route)
    # The cloud (800 ms) beats both nodes; between them, the idle node's pool comes first.
    cloud_target, edge, grid = decision.targets
    assert cloud_target.kind == "cloud" and (edge.kind, edge.node_ids[0], grid.kind) == (
        "edge",
        "idle",
        "grid",
    )
    assert grid.expected_latency_ms == pytest.approx(2 * edge.expected_latency_ms)  # waits for its item


def test_a_router_without_a_grid_rule_never_uses_the_grid() -> None:
    assert "grid" not in kinds(decide("auto", MINUTES_FR, [node("g", grid=True)], rule=None))


def test_the_grid_target_must_honour_the_requests_controls_like_any_other() -> None:
    plain = dataclasses.replace(node("g", grid=True), features=frozenset())
    request = RoutingRequest("auto", PREFER_EDGE, None, frozenset({"seed"}), prompt_chars=len(MINUTES_FR))
    honouring = dataclasses.replace(node("pi"), features=frozenset({"seed"}))
    decision = choose_target(request, [plain, honouring], [], default_catalogue(), RULE)
    assert isinstance(decision, Route)
    assert [(t.kind, t.node_ids) for t in decision.targets] == [("edge", ("pi",))]


# The use case: what the router publishes, and what the node's answer says it was.


def requested(content: str, model: str = "auto", routing: RoutingPreference | None = None) -> ChatRequested:
    return ChatRequested(
        source="test",
        copro_id="c1",
        model=model,
        messages=[
            ChatMessage(role="system", content="Tu résumes des procès-verbaux d'assemblée générale."),
            ChatMessage(role="user", content=content),
        ],
        context="copro:c1",
        reply_subject="koprogo.reply.gw1",
        deadline=utc_now() + timedelta(seconds=30),
        routing=routing,
    )


def grid_registry() -> NodeRegistry:
    registry = NodeRegistry()
    grid_beat = beat("pi-grid", [BUNDLED_MODEL_ID]).model_copy(update={"task_types": sorted(GRID_TASKS)})
    registry.observe(grid_beat, time.monotonic())
    return registry


async def test_a_long_auto_chat_is_published_as_grid_work_and_its_answer_counts_as_grid() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, grid_registry(), FakePolicyBook(), grid_rule=RULE)
    await dispatcher.on_chat_requested(requested(f"Résume ce PV :\n{MINUTES_FR}"))
    [(subject, work)] = bus.published
    assert (
        subject
        == subjects.run_inference_grid(BUNDLED_MODEL_ID)
        == "koprogo.work.grid.smollm2:135m-instruct-q4"
    )
    assert isinstance(work, RunInference) and work.routing is not None
    assert [t.kind for t in work.routing.targets] == ["grid", "edge"]
    assert "long chat" in work.routing.reason
    assert chat_outcomes.node_execution_type(work) == "grid"
    # The same node's answer to a short chat is an edge answer.
    await dispatcher.on_chat_requested(requested("Quand a lieu la prochaine AG ?"))
    subject, short = bus.published[1]
    assert subject == subjects.run_inference_edge(BUNDLED_MODEL_ID)  # c1 has no node of its own
    assert isinstance(short, RunInference) and chat_outcomes.node_execution_type(short) == "edge"


async def test_the_prompt_is_measured_over_every_message_not_the_last_alone() -> None:
    bus = FakeBus()
    half = NOTICE_NL[:1100]
    dispatcher = Dispatcher(bus, grid_registry(), FakePolicyBook(), grid_rule=GridRule(min_prompt_chars=2000))
    chat = requested(half).model_copy(
        update={
            "messages": [
                ChatMessage(role="user", content=half),
                ChatMessage(role="assistant", content="Ik vat het samen zodra ik het hele verslag heb."),
                ChatMessage(role="user", content=NOTICE_NL[1100:2200]),
            ]
        }
    )
    await dispatcher.on_chat_requested(chat)
    assert bus.published[0][0] == subjects.run_inference_grid(BUNDLED_MODEL_ID)


async def test_a_failed_grid_attempt_falls_back_to_the_plans_next_target() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, grid_registry(), FakePolicyBook(), grid_rule=RULE)
    await dispatcher.on_chat_requested(requested(MINUTES_FR))
    [(_, work)] = bus.published
    assert isinstance(work, RunInference) and work.routing is not None
    failed = InferenceAttemptFailed(
        id=derived_event_id(work.id, "attempt_failed"),
        source="test",
        copro_id=work.copro_id,
        request_id=work.request_id,
        work=work,
        target=work.routing.targets[0],
        status=503,
        error="node_unavailable",
        message="the grid node left",
    )
    await dispatcher.on_attempt_failed(failed)
    subject, retry = bus.published[1]
    assert subject.startswith("koprogo.work.edge.")
    assert isinstance(retry, RunInference) and retry.routing is not None and retry.routing.attempt == 2
    assert chat_outcomes.node_execution_type(retry) == "edge"
    assert retry.routing.failures == ["grid smollm2:135m-instruct-q4: node_unavailable"]


async def test_an_edge_only_request_never_becomes_grid_work() -> None:
    bus = FakeBus()
    dispatcher = Dispatcher(bus, grid_registry(), FakePolicyBook(), grid_rule=RULE)
    await dispatcher.on_chat_requested(requested(MINUTES_FR, routing=RoutingPreference(policy="edge_only")))
    [(subject, work)] = bus.published
    assert subject.startswith("koprogo.work.edge.")
    assert isinstance(work, RunInference) and work.routing is not None
    assert {t.kind for t in work.routing.targets} == {"edge"}


def test_work_without_a_plan_is_edge_work() -> None:
    work = RunInference(
        id=new_event_id(),
        source="test",
        request_id=new_event_id(),
        model=BUNDLED_MODEL_ID,
        messages=[ChatMessage(role="user", content="Bonjour")],
        reply_subject="koprogo.reply.gw1",
        deadline=utc_now() + timedelta(seconds=30),
    )
    assert chat_outcomes.node_execution_type(work) == "edge"
