"""The sampler on fake-CPU meshes (2x4: data x tensor, 8x1: fsdp x tensor, and a mesh with only
an fsdp axis, whose rules still name data and tensor: absent axes are dropped) equals one device."""

import jax
import numpy as np
import pytest

from azr_jax.config import MeshSection
from azr_jax.models import param_shardings
from azr_jax.sampling import SamplingSettings
from azr_jax.sharding import make_mesh

from tiny_sampler_model import CFG, GREEDY, gen

RULES = MeshSection().rules
SAMPLED = SamplingSettings(temperature=1.0, top_k=8, top_p=0.95, max_new_tokens=8)


@pytest.fixture(scope="module")
def single_device(params):
    return gen(params, GREEDY, n=2), gen(params, SAMPLED, n=2, key=3)


@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 1, "tensor": 4}, {"data": 1, "fsdp": 8, "tensor": 1},
                                   {"fsdp": 8}], ids=["2x4", "8x1", "fsdp-only"])
def test_mesh_matches_single_device(params, single_device, shape):
    mesh = make_mesh(shape)
    sharded = jax.device_put(params, param_shardings(CFG, mesh, RULES))
    ref_greedy, ref_sampled = single_device
    out = gen(sharded, GREEDY, n=2, mesh=mesh, rules=RULES)
    np.testing.assert_array_equal(out.tokens, ref_greedy.tokens)
    np.testing.assert_array_equal(out.lengths, ref_greedy.lengths)
    np.testing.assert_allclose(out.logprobs, ref_greedy.logprobs, atol=1e-5)  # float32, 16 positions
    if shape.get("tensor", 1) > 1:  # one sampled run: per-row keys make draws independent of the layout
        out = gen(sharded, SAMPLED, n=2, key=3, mesh=mesh, rules=RULES)
        np.testing.assert_array_equal(out.tokens, ref_sampled.tokens)
        np.testing.assert_allclose(out.logprobs, ref_sampled.logprobs, atol=1e-5)


def test_chunked_prefill_on_a_mesh_matches_single_device(params, single_device):
    """The prompt pass in chunks of 3 (a lax.scan writing one cache) under the 2x4 mesh's
    activation constraints gives the unchunked single-device greedy run."""
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    sharded = jax.device_put(params, param_shardings(CFG, mesh, RULES))
    out = gen(sharded, GREEDY, n=2, mesh=mesh, rules=RULES, prefill_chunk=3)
    np.testing.assert_array_equal(out.tokens, single_device[0].tokens)
    np.testing.assert_allclose(out.logprobs, single_device[0].logprobs, atol=1e-5)
