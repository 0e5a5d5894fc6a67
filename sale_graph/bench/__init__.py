"""Offline, reproducible benchmark of SALE against routing baselines.

Modules, one concept each: ``tasks`` (HumanEval and reasoning-gym, bins, verifiers,
splits), ``sandbox`` (limited execution of model-written code), ``coding_executor``
(write/test/fix subgraph), ``bank`` (persistent model-call cache and outcome store),
``records`` (what the metrics read), ``routers`` (baselines), ``fit`` (MILP weight
fitting), ``metrics`` and ``report``; a run is ``config`` (what runs), ``ledger`` (the
metered bank and pool), ``jobs`` (one model-facing job each), ``runner`` (their order)
and ``analysis`` (fit, baselines and report from a bank, no model). Nothing is imported
here, so using one module does not pull in the dependencies of the others.
"""
