"""A local JWKS endpoint (no network) and keys to sign with, as the KoproGo platform would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        codec = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = codec.to_jwk(self.private_key.public_key(), as_dict=True)
        return jwk | {"kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, *, issuer: str, audience: str, **claims: Any) -> str:
        now = datetime.now(UTC)
        payload = {"iss": issuer, "aud": audience, "iat": now, "exp": now + timedelta(minutes=10)} | claims
        return jwt.encode(payload, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid})


@dataclass
class JwksServer:
    url: str
    keys: list[SigningKey]
    fetches: list[str] = field(default_factory=list)
    # Another status (500: the platform failing) answers with an error page instead of the keys.
    status: int = 200


@contextmanager
def jwks_server(*keys: SigningKey) -> Iterator[JwksServer]:
    served = JwksServer(url="", keys=list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.fetches.append(self.path)
            body, content_type = b"<html>unavailable</html>", "text/html"
            if served.status == 200:
                body = json.dumps({"keys": [k.public_jwk() for k in served.keys]}).encode()
                content_type = "application/json"
            self.send_response(served.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
