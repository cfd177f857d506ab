"""The pipeline's phases, one module each (the order and the runner: ``pipeline.runner``)."""
