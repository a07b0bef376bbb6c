"""Real local stand-ins the tests and the benchmarks share (nothing here is imported by the service):
a redis-server process on a free port (`redis_server`), a threaded HTTP server for photos and webhooks
(`http_server`), the tiny ONNX matting model and synthetic product photos (`matting_model`), and the
helpers that run the graph on one machine (`graph`). Needs the `test` extra (onnx)."""
