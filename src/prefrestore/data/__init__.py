"""Data steps: ingest and synthetic faces, great-expectations validation, captioning (Qwen2.5-VL),
the benchmark folder layout, and the Eq. 16 degradation (``data.degrade``).
"""
