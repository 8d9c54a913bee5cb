"""`gptlab serve`: runs behind an OpenAI-compatible HTTP API (engine.py: one request's generation; app.py: the
routes, the wire format and the errors)."""
