"""Fidelity tests: what the lab writes for HA router replicas against what Neutron writes."""
