"""The ground floor: errors, wire helpers (protobuf, framing, JSON), metrics, rate limits, logging,
the identity key, signed peer records and the replay window. Imports nothing else of the project."""
