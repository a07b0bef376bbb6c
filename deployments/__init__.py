"""Thin Ray Serve shells over `pipeline/`; `deployments.app:build` is the serve_config import_path."""
