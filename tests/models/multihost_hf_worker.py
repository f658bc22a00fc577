"""One process of the two-process HF load/save test (run by test_hf_multihost.py, not by pytest).

usage: python multihost_hf_worker.py PORT PROCESS_ID SRC_DIR DST_DIR
Each process owns 4 CPU devices of an 8-device global mesh, so no parameter is fully
addressable: loading reads only local blocks and saving must gather with collectives.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cpu_flags import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags(4)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, pid, src, dst = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

from azr_jax.models.checkpoint_hf import from_pretrained  # noqa: E402
from azr_jax.sharding import make_mesh  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4
model = from_pretrained(src, mesh=make_mesh({"fsdp": 4, "tensor": 2}))
leaves = jax.tree.leaves(model.params)
assert not all(leaf.is_fully_addressable for leaf in leaves)
tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % model.config.vocab_size
logits = model.logits(tokens)
from jax.experimental import multihost_utils  # noqa: E402

full = np.asarray(multihost_utils.process_allgather(logits, tiled=True))
if pid == 0:
    np.save(os.path.join(dst + "_logits.npy"), full)
model.save_pretrained(dst, max_shard_size="100KB")
print(f"process {pid}: ok", flush=True)
