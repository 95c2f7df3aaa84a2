"""A short run of the soak comparison in every `make test` (the long one is `make soak`)."""

import pytest

from tests.soak import run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_agrees_with_reference_over_a_random_flow(seed: int) -> None:
    run(commands=20_000, seed=seed, check_every=500)
