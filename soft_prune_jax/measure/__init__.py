"""Measuring models: ``flops`` (analytic MACs and parameters from shapes), ``benchmark`` (jitted
latency of models, layers and train steps against the machine's sgemm rate), ``report`` (per-layer
dense vs compact comparison, table, JSON, width plot) and ``markdown`` (a run's report.md from its
report record). May import ``ops``, ``method`` and ``models``; never ``compact``, ``methods``,
``training`` or the pipeline.
"""
