"""Measuring models: ``flops`` (analytic MACs and parameters from shapes), ``benchmark`` (jitted
latency of models, layers and train steps against the machine's sgemm rate), ``report`` (per-layer
dense vs compact comparison, table, JSON, width plot) and ``markdown`` (a run's report.md from its
report record). May import ``ops``, ``scp``, ``models``, ``graph`` (``flops`` counts MACs from
a traced jaxpr) and the package-level ``host_memory`` (``benchmark`` records the allocator's state
next to its timings); never ``compact``, ``pruners``, ``training`` or the pipeline.
"""
