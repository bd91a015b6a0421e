"""Eq. 16 degradation: ``direct`` (the reference path and its config), ``fast`` (the exact banded
fast path), ``on_the_fly`` (training loaders) and ``step`` (the ``degrade`` pipeline step).
"""
