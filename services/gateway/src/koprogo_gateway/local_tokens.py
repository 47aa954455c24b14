"""Minting HS256 tokens with the local secret: `koprogo_shared.local_tokens`, the one minter."""

from __future__ import annotations

from koprogo_shared.local_tokens import mint_token

__all__ = ["mint_token"]
