"""The paper's measurements: answer embeddings and distances, metrics, per-fact evaluation, the
re-weighted loss, the data filter and cached distance tables. Imports data and models."""
