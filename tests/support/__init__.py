"""Real local stand-ins the tests share: a redis-server process, an HTTP server, fixture paths."""
