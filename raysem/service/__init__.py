"""The Ray service: study specs, studies on Ray Tune, MLflow tracking, job entry points and the
Ray auth token. Imports every layer below it."""
