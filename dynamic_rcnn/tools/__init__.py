"""Command-line tools run as ``python -m dynamic_rcnn.tools.NAME``: ``plot`` (a run's threshold, beta and losses)."""
