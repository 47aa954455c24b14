"""When a chat may run on the grid, and which grid nodes may take it. Pure.

The grid is the capacity volunteers lend (`koprogo-node --grid`: the node's heartbeat names
the grid task types it runs) for long, non-interactive work. A chat becomes a grid candidate
when all of these hold:

* the router picks its model (`auto`, `auto:<class>`): an explicit model id is the caller's
  choice, and keeps to its edge pools and cloud deployments;
* its policy is not `edge_only`, which keeps work on the copro's own or chosen edge pools;
* its copro may use the shared pool: grid chats come from any copro, so the shared pool's grid
  nodes alone take them (a copro's own node works for that copro alone, as for grid tasks);
* it is long (`GridRule`): its messages hold at least `min_prompt_chars` characters (a long
  document to summarise or translate), or it asks for at least `min_max_tokens` of answer.
  Characters are a size here, never a token count.

The grid target is estimated as an edge pool is (its nodes are edge nodes: same carbon and
latency rules). Where it goes in the order is `routing._order`'s business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from koprogo_shared import subjects
from koprogo_shared.node_registry import EdgeCandidate
from koprogo_shared.routing.targets import RoutingRequest, Target, node_target

DEFAULT_GRID_MIN_PROMPT_CHARS = 6000
DEFAULT_GRID_MIN_MAX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class GridRule:
    """What makes a chat long enough for the grid (`RouterSettings.grid_min_*`)."""

    min_prompt_chars: int = DEFAULT_GRID_MIN_PROMPT_CHARS
    min_max_tokens: int = DEFAULT_GRID_MIN_MAX_TOKENS


def long_chat(request: RoutingRequest, rule: GridRule) -> str | None:
    """Why `request` is long (for the routing reason), or None when it is not."""
    if request.prompt_chars >= rule.min_prompt_chars:
        return f"prompt of {request.prompt_chars} chars >= {rule.min_prompt_chars}"
    if request.max_tokens is not None and request.max_tokens >= rule.min_max_tokens:
        return f"max_tokens {request.max_tokens} >= {rule.min_max_tokens}"
    return None


def grid_candidate(request: RoutingRequest, model_is_chosen_by_router: bool, rule: GridRule) -> str | None:
    """Why `request` may go to the grid, or None when it may not (see the module's rules)."""
    if not model_is_chosen_by_router or request.policy.policy == "edge_only":
        return None
    if request.policy.own_nodes_only or subjects.SHARED_POOL not in request.pools:
        return None
    return long_chat(request, rule)


def grid_target(
    model: str, request: RoutingRequest, edge_candidates: Sequence[EdgeCandidate]
) -> Target | None:
    """The live grid nodes of the shared pool serving `model`, as one target (None when there are none)."""
    nodes = [
        c for c in edge_candidates if c.task_types and model in c.models and subjects.SHARED_POOL in c.pools
    ]
    return node_target("grid", model, request, nodes)
