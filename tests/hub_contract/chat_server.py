"""A local stand-in for an OpenAI-compatible chat completions endpoint, for tests.

It speaks the contract that ``huggingface_hub.InferenceClient`` (``base_url=...``) and
OpenAI-compatible clients (litellm, as aider uses it) send and parse:

========  ========================  ===============================================
method    path                      what
========  ========================  ===============================================
POST      /v1/chat/completions      ``{"model", "messages", "stream"?, ...}`` ->
                                    ``chat.completion`` (or SSE ``chat.completion.chunk``
                                    events ending in ``data: [DONE]`` when streaming)
GET       /v1/models                the model list
========  ========================  ===============================================

Answers are scripted: each request takes the next :class:`Reply` of the script (the
last one repeats); a reply may be computed from the request (a function of the
messages). A reply can also be an HTTP error (``status``, with ``Retry-After``) or a
delay longer than the client's timeout. Usage is counted as whitespace-separated words
of the prompt and of the answer, so tests can check the recorded token counts.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer."""

    content: str | Callable[[list[dict[str, Any]]], str] = ""
    status: int = 200
    retry_after: float | None = None
    delay: float = 0.0  # seconds before answering (a timeout, when past the client's)


@dataclass
class Seen:
    """A request the server answered (or refused)."""

    model: str | None
    messages: list[dict[str, Any]]
    stream: bool
    status: int
    at: float
    headers: dict[str, str] = field(default_factory=dict)


def words(text: str) -> int:
    return len(text.split())


class ChatServer:
    """``with ChatServer([Reply(...), ...]) as server:`` then ``server.base_url``."""

    def __init__(self, script: list[Reply] | None = None) -> None:
        self.script = list(script or [Reply("{}")])
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answered(self) -> list[Seen]:
        """The requests that got a completion (status 200)."""
        return [r for r in self.requests if r.status == 200]

    def _next(self) -> Reply:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)  # unless the client gave up (a scripted timeout)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": "scripted", "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    self._send(400, {"error": {"message": "messages: expected a list"}})
                    return
                reply = server._next()
                stream = bool(body.get("stream"))
                server.requests.append(Seen(body.get("model"), messages, stream, reply.status,
                                            time.time(), dict(self.headers)))
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    headers = ({"Retry-After": f"{reply.retry_after:g}"}
                               if reply.retry_after is not None else {})
                    self._send(reply.status, {"error": {"message": "scripted error",
                                                        "type": "rate_limit"}}, headers)
                    return
                content = reply.content(messages) if callable(reply.content) else reply.content
                prompt = sum(words(_text(m.get("content"))) for m in messages)
                usage = {"prompt_tokens": prompt, "completion_tokens": words(content),
                         "total_tokens": prompt + words(content)}
                model = body.get("model") or "scripted"
                if stream:
                    self._stream(model, content, usage)
                    return
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": usage})

            def _stream(self, model: str, content: str, usage: dict[str, int]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": model}
                chunks = [{**base, "choices": [{"index": 0, "delta": {
                    "role": "assistant", "content": content}, "finish_reason": None}]},
                          {**base, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "stop"}], "usage": usage}]
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
