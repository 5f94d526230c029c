"""The live inference server of ``model-ops serve``, without Dagster.

- :mod:`.scoring`: one registry version ready to answer requests, scored by the batch path's task logic.
- :mod:`.fleet`: the slots (what serves each model now) and the follower that keeps them in step with the registry.
- :mod:`.protocol`: the Open Inference Protocol v2 and MLflow scoring payloads, in and out, and their errors.
- :mod:`.predlog`: the asynchronous, bounded writer of served predictions into the Delta prediction log.
- :mod:`.stats`: serving statistics per short interval (the ``serving_stats`` table); :mod:`.alerts`: the declared
  alerts and the canary guard, judged on every interval.
- :mod:`.app`: the Starlette application; :mod:`.server`: uvicorn around it.
"""

from model_ops.serving.app import ServeConfig, create_app
from model_ops.serving.fleet import Fleet, Slot
from model_ops.serving.predlog import PredictionLog

__all__ = ["Fleet", "PredictionLog", "ServeConfig", "Slot", "create_app"]
