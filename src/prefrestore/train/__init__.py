"""Training: stage 0 (tiny bootstrap), stages 1.1/1.2 (``stage1``, Eqs. 10-11), stage 2 DiffusionNFT
(``stage2``, ``nft``: Eqs. 12-15), rewards, checkpoints and multi-process helpers.
"""
