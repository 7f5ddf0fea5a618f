"""Sizing a run before renting hardware (`nst-size-run`, tools/size_run.py).

How much memory one replica needs (parameters, optimizer slots, EMA,
gradients, the activations a training step keeps for its backward pass),
the largest per-replica batch that fits a device, and how long the steps
take at a stated utilisation of the device's peak rate. Modules:
`devices` (the device table, data), `memory`, `timing`, `recipe` (what a gin
recipe trains), `measure` (the checks against this CPU), `cli`.
"""
