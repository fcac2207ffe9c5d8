"""The HTTP layer under the app: uvicorn's h11 protocol, with one change in how a bad request head ends.

h11 gives up on a request head (request line and headers) when it is malformed, or once it has
buffered MAX_HEADER_BYTES without its end (a head that arrives whole in one read passes, and
errors.RequestLimits answers it). uvicorn then writes a plain-text 400 with no Content-Length (its
end is the close) and closes the socket at once, with the client's bytes still arriving, so the kernel
resets the connection: a client that sent a 200 KB header reads a reset, not an answer. `Protocol`
answers with h11's own status for the failure (431 for headers too large, else 400) and an OpenAI
error object with its Content-Length, then closes in stages (RFC 9112 9.6): it half-closes, drops what
the client still sends (bounded by LINGER_BYTES and LINGER_SECONDS) and closes when the client does,
so no reset can overtake the answer. `uvicorn_config` is the one place the server's uvicorn
settings are made: `serve()` and the tests' live servers use it.
"""
from __future__ import annotations

import http
import json
import sys

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import MAX_HEADER_BYTES, headers_too_large

LINGER_SECONDS, LINGER_BYTES = 5.0, 16 << 20


class Protocol(H11Protocol):
    _dropped: int | None = None  # bytes dropped since the error answer; None before one

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this from its `except h11.RemoteProtocolError` block: the exception is the current one
        exc = sys.exc_info()[1]
        status = getattr(exc, "error_status_hint", 400)
        status = status if 400 <= status < 500 else 400
        if status == 431:
            message = headers_too_large(self.config.h11_max_incomplete_event_size)
        else:
            message = f"malformed HTTP request: {exc or msg}"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "headers_too_large" if status == 431 else "invalid_http_request"}})
        head = h11.Response(status_code=status, headers=[(b"content-type", b"application/json"),
                                                         (b"content-length", str(len(body)).encode()),
                                                         (b"connection", b"close")],
                            reason=http.HTTPStatus(status).phrase.encode())
        for event in (head, h11.Data(data=body.encode()), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()  # sent once the answer is out; the client's bytes are still read
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._dropped is None:
            return super().data_received(data)
        self._dropped += len(data)  # the rest of a request already answered
        if self._dropped > LINGER_BYTES:
            self.transport.close()


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, **kw) -> uvicorn.Config:
    """uvicorn's settings for the app: the h11 `Protocol` above, with MAX_HEADER_BYTES of request head."""
    kw = {"log_level": "warning", **kw}
    return uvicorn.Config(app, host=host, port=port, http=Protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                          **kw)
