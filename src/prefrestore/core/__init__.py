"""The ground floor: configuration (params.yaml), atomic writes, the image decoder, the local weight store,
MLflow tracking helpers and the variant names. Imports nothing else from prefrestore.
"""
