"""yarn_jax: context-window extension for RoPE language models in JAX/Flax.

Modules (data flows left to right): rope -> attention -> model -> train; data and evaluate
beside them. Import what you need: ``from yarn_jax import rope`` pulls in nothing else.
"""

__version__ = "0.1.0"
