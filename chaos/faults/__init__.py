"""Faults: what can be done to an HA router's replicas and nodes, one module each.

Each module defines a ``chaos.faults.base.Fault`` subclass that describes itself; the registry
(``chaos.experiment.registry``) finds them, and plugins' faults, by their ``type``. Nothing is
imported here, so that loading one fault module does not load the others.
"""
