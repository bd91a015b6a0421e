"""Evaluation: the ``evaluate`` step over the five benchmarks, its report tables and the paper's
published numbers (``paper_tables``).
"""
