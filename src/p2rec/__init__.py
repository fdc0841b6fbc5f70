"""p2rec: a workflow-managed benchmark suite for LLM-enhanced sequential recommendation."""

__version__ = "0.1.0"


class P2RecError(Exception):
    """An error in user input (data, configuration, files) with a message that names the culprit."""
