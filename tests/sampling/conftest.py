"""Fixtures of the sampler tests."""

import pytest

from tiny_sampler_model import make_params


@pytest.fixture(scope="session")
def params():
    return make_params()
