"""Sizing a run before renting hardware (`nst-size-run`, tools/size_run.py).

How much memory one replica needs (parameters, optimizer slots, EMA,
gradients, the activations a training step keeps for its backward pass),
the largest per-replica batch that fits a device, and how long the steps
take: a per-op roofline of the traced graph at the device's rates and a
stated utilisation. Modules: `devices` (the device table, data), `memory`,
`graph` (the forward graph's ops), `timing` (the roofline), `cpu_rates`
(this CPU's measured rates), `recipe` (what a gin recipe trains),
`estimate`, `measure` and `report` (the checks against this CPU, the docs
tables), `cli`.
"""
