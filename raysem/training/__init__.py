"""Trials: the trial config and optimizer, PEFT methods and Houlsby adapters, packed LoRA trials,
one trial, DeepSpeed full fine-tuning, weight/feature analyses and the speed benchmark.
Imports data, models and semantics."""
