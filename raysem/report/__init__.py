"""From MLflow runs to the paper's figures and tables: run data, analysis, bootstrap statistics,
figures and Markdown/HTML rendering. Imports training (analyses) and the layers below."""
