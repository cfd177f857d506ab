"""Training: the state, the per-device steps, the parallel drivers, the loop and its I/O.

Owns ``state`` (TrainState, variables, schedule, optimizer), ``steps`` (one per-device train/eval
step written with an axis name), ``parallel`` (pmap and jit(shard_map) drivers of those steps),
``evaluate``, ``budget`` (the step under a MAC budget or the cost-aware penalty), ``summaries``
(TensorBoard), ``progress`` (log lines), ``loop`` (``fit`` of one ``Phase``, resumable),
``checkpoint`` (orbax), ``distributed``, ``data`` (the input pipelines, a package: tfds, folders,
user pipelines), ``cpu_devices`` (a CPU-only host split into XLA devices) and ``config_validation``.
The model and training phase of a config are the pipeline's (``pipeline.model_path.training_phase``).
May import ``scp``, ``models``, ``pruners`` and the package-level ``host_memory``; never ``compact``,
``measure`` or the pipeline (what the loop needs from them, e.g. MACs for the progress line, is passed
in as a function).
"""
