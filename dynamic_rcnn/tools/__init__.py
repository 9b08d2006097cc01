"""Command-line tools run as ``python -m dynamic_rcnn.tools.NAME``: ``plot`` (a run's threshold, beta and losses),
``compare`` (does Dynamic R-CNN help on your config and data: paired runs, their report); ``paired`` is the
engine of paired runs that ``compare`` and the project's benchmarks share."""
