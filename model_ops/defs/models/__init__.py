"""The project's models, one folder each with a ``defs.yaml`` of type ``model_ops.ModelComponent``
(``dg scaffold defs model_ops.ModelComponent NAME`` adds one)."""
