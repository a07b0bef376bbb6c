"""shop3d pipeline: the plain-Python library behind the Ray Serve graph, the CLI and the tests.

Importing this package does no work and needs no Ray; docs/architecture.md maps the data flow to its modules.
"""

__version__ = "0.1.0"
