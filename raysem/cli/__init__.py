"""The ``raysem`` command line: one module per command group. Imports any layer."""
