"""Two local processes (4 CPU devices each, one 8-device mesh) load and save an HF checkpoint.

Loading places only local blocks; saving gathers one tensor at a time with collectives and
only process 0 writes. transformers must reload the result with identical tensors.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_reference import hf_model, small_config
from process_group import communicate_all, free_port
from transformers import AutoModelForCausalLM


@pytest.mark.slow
def test_two_process_load_and_save_roundtrip(tmp_path):
    cfg = small_config("qwen2", num_kv_heads=2)
    hf = hf_model(cfg, seed=7, init_std=0.1)
    src, dst = tmp_path / "src", tmp_path / "dst"
    hf.save_pretrained(src, max_shard_size="100KB")
    worker = Path(__file__).with_name("multihost_hf_worker.py")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(worker), str(port), str(pid), str(src), str(dst)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    outputs = [out for out, _ in communicate_all(procs, timeout=300)]
    for pid, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and f"process {pid}: ok" in out, out[-3000:]

    reloaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32, attn_implementation="eager")
    for name, value in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    tokens = np.arange(24).reshape(2, 12) % cfg.vocab_size
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
    got = np.load(str(dst) + "_logits.npy")
    assert np.abs(got - ref).max() < 1e-4  # float32, 12 positions
