"""The model registry: the MLflow pyfunc model, ``register`` with its promotion gates, model cards,
and the reviewers' comparison views (``review``).
"""
