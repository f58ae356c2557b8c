"""Every committed fuzz input, replayed without atheris: the seed corpora and each input that once
made a decoder raise something it does not declare (tests/fuzz/crashes). A fixed decoder keeps its
crash inputs here for good."""

from __future__ import annotations

import pytest

from tests.fuzz.harnesses import HARNESSES


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_every_committed_input_meets_only_the_declared_errors(name: str):
    harness = HARNESSES[name]
    inputs = list(harness.inputs())
    assert any(path.name.startswith("seed-") for path, _ in inputs), f"{name} has no seed corpus"
    for path, data in inputs:
        try:
            harness(data)
        except Exception as e:  # a crash: name the input that caused it
            raise AssertionError(f"{path}: {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_the_seeds_are_messages_the_decoder_accepts(name: str):
    """Seeds are what makes coverage-guided runs start deep: each must be current (the encoders
    did not change under it) and, except the answers chosen to be refusals, decode cleanly."""
    harness = HARNESSES[name]
    seeds = harness.seeds()
    committed = {data for path, data in harness.inputs() if path.name.startswith("seed-")}
    assert set(seeds) == committed, f"{name}: run `python -m tests.fuzz.run --write-seeds` and commit the corpus"
    accepted = 0
    for seed in seeds:
        try:
            harness.target(seed)
            accepted += 1
        except harness.errors:
            pass
    assert accepted >= 1
