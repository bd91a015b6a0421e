"""Kubeflow Pipelines definitions: ``training`` (all steps) and ``evaluation`` (a registered model).

Each module's ``build(cluster, profile)`` returns the pipeline function for a profile's ``cluster``
section; ``prefrestore-pipeline compile`` (:mod:`pipelines.cli`) writes them to ``pipelines/compiled/``.
"""
