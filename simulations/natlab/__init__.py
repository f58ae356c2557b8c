"""The network-namespace NAT lab: real kernel NATs between real processes (see docs/natlab.md)."""

from simulations.natlab.topology import Lab, LabError, LabHost, NatType

__all__ = ["Lab", "LabError", "LabHost", "NatType"]
