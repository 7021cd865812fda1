"""``chaos serve``: the operator that runs experiments on their schedules, unattended.

It sits on top of the runner, not beside it: every run goes through ``run_experiment``, the
engine ``chaos run`` uses, with the same journal, reports, exit semantics and rollback; leases
on routers and nodes are shared with ``chaos run`` through the state database (``chaos.state``).
"""
