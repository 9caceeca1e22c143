"""Orchestration: the stages of one analysis, each handing typed results to the next and files to the writers.

``prepare`` (inputs, design, contrasts, loading) -> ``model`` (fit, contrast maps) -> ``inference`` (the methods
the registry names) -> writers in ``runner.outputs``; ``pipeline.run_stages`` composes them for ``runner.app.run``.
"""
