from azr_jax.config import Config

config = Config(name="tiny")
