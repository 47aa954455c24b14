"""Where `tests/unit/test_rate_limit_rules.py` still imports the rate-limit fields from; they moved to
`service_layer/rate_limit_headers.py` with the chat use case that returns them."""

from __future__ import annotations

from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers

__all__ = ["rate_limit_headers", "refusal_headers"]
