"""shop3d pipeline: the plain-Python library behind the Ray Serve graph, the CLI and the tests.

Importing this package does no work and needs no Ray; see ARCHITECTURE.md for the data flow.
"""

__version__ = "0.1.0"
