"""Orchestration: the step table (``steps``), the Kubeflow in-pod runtime (``kfp_runtime``), the
TrainJob/PyTorchJob launcher and the demo. Compiling and submitting KFP pipelines lives in the
top-level ``pipelines/`` package, which imports this one (never the other way).
"""
