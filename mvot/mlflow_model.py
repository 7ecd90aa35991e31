"""The code MLflow runs to load a logged mvot model (MLflow's "models from code").

:func:`mvot.tracking.log_pyfunc_model` logs this file with the model directory as an
artifact; loading the model runs it, and it names the model class, so nothing is pickled
and a logged model does not depend on the cloudpickle or Python version that logged it.
"""

from mvot.tracking import set_pyfunc_model

set_pyfunc_model()
