"""Pref-Restore: preference-aware blind face restoration, as an MLOps pipeline.

The library never imports kfp or dvc; ``components/`` and ``pipelines/`` wrap it.
"""

__version__ = "0.1.0"
