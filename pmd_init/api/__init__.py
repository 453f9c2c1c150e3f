"""The HTTP API: one Sanic app on pmd's own loop, served on TCP and a Unix socket.

Handlers are thin (validate, call one supervisor method, serialize); errors become HTTP
responses in errors.py only."""
