"""The Dagster layer: thin glue that turns the model_ops library into resources, assets, checks and sensors."""
