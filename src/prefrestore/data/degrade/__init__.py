"""Eq. 16 degradation: ``direct`` (the reference path and its config), ``fast`` (the exact banded
fast path and the shared work buffers), ``dft`` (the exact DFT path for high-rank kernels at small r,
and the cost model that picks a path per sample), ``on_the_fly`` (training loaders) and ``step``
(the ``degrade`` pipeline step).
"""
