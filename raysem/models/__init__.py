"""Causal LMs: loading (embedded, folder, hub id), prompt formatting, greedy decoding and target
encoding. Imports ``raysem.paths`` and ``raysem.data``."""
