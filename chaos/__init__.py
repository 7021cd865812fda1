"""Chaos engineering for OpenStack Neutron L3 HA routers."""

__version__ = "0.1.0"
