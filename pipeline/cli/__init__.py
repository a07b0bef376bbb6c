"""The `shop3d` command: `main` (parser and dispatch), `generate`, `queue` (submit, status), `serve`."""
