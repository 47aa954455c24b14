"""The context a prompt for a given model may fill, in tokens.

Splitting documents into pieces (paragraphs, sentences, packing) is shared with the edge node
and lives in `koprogo_shared.document_chunks`; what stays here is the gateway's knowledge of
models.
"""

from __future__ import annotations

from koprogo_gateway.domain.model_classes import context_length_of, find_auto_class
from koprogo_shared.catalogue import find_model

# An edge node loads its model with this context unless told otherwise (koprogo_node's
# LLAMA_N_CTX default): smaller than the catalogue's trained context, and what bounds a prompt.
EDGE_NODE_CONTEXT_TOKENS = 2048


def prompt_context_tokens(model: str) -> int:
    """The context a prompt for `model` may fill: the node's when an edge node may run it."""
    context = context_length_of(model) or EDGE_NODE_CONTEXT_TOKENS
    known = find_model(model)
    auto = find_auto_class(model)
    may_run_on_edge = (known is not None and known.edge_compatible) or (
        auto is not None and auto.edge_compatible
    )
    return min(context, EDGE_NODE_CONTEXT_TOKENS) if may_run_on_edge else context
