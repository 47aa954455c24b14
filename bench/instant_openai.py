"""An OpenAI-compatible backend that answers at once: the peers' common backend in peer_proxy.py.

    python bench/instant_openai.py --port 18000 [--processes 2]

`POST /v1/chat/completions` (non-streamed) gets a fixed short completion with a `usage` block
sized from the request (prompt tokens ~ body bytes / 4), echoing the requested model; `GET
/health` answers 200. A raw asyncio HTTP/1.1 server with keep-alive (stdlib only, no framework),
in `--processes` processes sharing the port (SO_REUSEPORT): thousands of requests/s on one
core, so that the proxies in front of it, not this server, are what a benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys
import time

ANSWER = "L'assemblée générale a approuvé le budget et le remplacement de la chaudière."
COMPLETION_TOKENS = 16


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # several requests may be in the buffer (pipelining)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            close = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, _, rest = head[0].partition(" ")
            path = rest.split(" ", 1)[0]
            self.respond(method, path, body, close)
            if close:
                return

    def respond(self, method: str, path: str, body: bytes, close: bool) -> None:
        assert self.transport is not None
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                request = json.loads(body)
            except ValueError:
                self.send(400, b'{"error":{"message":"invalid JSON","type":"invalid_request_error"}}', close)
                return
            self.served += 1
            prompt_tokens = max(1, len(body) // 4)
            answer = {
                "id": f"chatcmpl-bench-{os.getpid()}-{self.served}-{id(self)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "unknown"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": prompt_tokens + COMPLETION_TOKENS,
                },
                "system_fingerprint": None,
            }
            self.send(200, json.dumps(answer).encode(), close)
        elif method == "GET" and path in ("/health", "/v1/models"):
            self.send(200, b'{"object":"list","data":[]}', close)
        else:
            self.send(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}', close)

    def send(self, status: int, payload: bytes, close: bool) -> None:
        assert self.transport is not None
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n".encode()
            + payload
        )
        if close:
            self.transport.close()


def serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Http, sock=sock)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    # SIGTERM (peer_proxy.py stopping it) ends the main process through `finally`, taking the others.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    workers = [multiprocessing.Process(target=serve, args=(args.port,)) for _ in range(args.processes - 1)]
    for worker in workers:
        worker.start()
    try:
        serve(args.port)
    finally:
        for worker in workers:
            worker.terminate()


if __name__ == "__main__":
    main()
