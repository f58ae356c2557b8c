"""The simulated internet in virtual time that drives the node's protocol cores."""
