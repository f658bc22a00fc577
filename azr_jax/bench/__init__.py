"""Performance benchmarks (`azr-jax bench NAME`), each printing one JSON object (DESIGN §3.5)."""
