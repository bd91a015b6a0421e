"""The registered model's code (MLflow "models from code"): MLflow runs this file to build the
pyfunc, whose settings come from ``model_config`` in ``MLmodel``. Nothing is unpickled."""

from mlflow.models import set_model

from prefrestore.registry.pyfunc import PrefRestorePyfunc

set_model(PrefRestorePyfunc())
