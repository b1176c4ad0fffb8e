"""Checkpoint conversion between transformers directories and yarn_jax model directories.

    python -m yarn_jax.convert hf-to-orbax --hf DIR --out DIR [--rope SPEC] [--param-dtype bfloat16]
    python -m yarn_jax.convert orbax-to-hf --checkpoint DIR --out DIR [--rope SPEC]
                                           [--max-position-embeddings N] [--dtype bfloat16]

``--rope`` sets the rope method written with the weights (e.g. the extended one after continued
pretraining: ``yarn:factor=16,original_max_position_embeddings=4096``); it defaults to the
checkpoint's own. The orbax directory is what ``init_from`` in a training config reads.
"""

from __future__ import annotations

import argparse
import sys

from yarn_jax import checkpoint, hf
from yarn_jax import rope as rope_lib


def _with_rope(config, spec: str | None, max_positions: int | None):
    changes = {}
    if spec:
        changes["rope"] = rope_lib.parse(spec, rotary_dim=config.head_dim, theta=config.rope.theta)
    if max_positions:
        changes["max_position_embeddings"] = max_positions
    return config.replace(**changes) if changes else config


def hf_to_orbax(args) -> None:
    overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    if args.rope:
        overrides["rope"] = args.rope
    model, config = hf.from_pretrained(args.hf, **overrides)
    print(f"loaded {config.architecture}: {config.num_params / 1e6:.1f}M parameters, rope {rope_lib.to_string(config.rope)}")
    checkpoint.save_model(model, args.out)
    print(f"wrote {args.out}")


def orbax_to_hf(args) -> None:
    model, config = checkpoint.load_model(args.checkpoint)
    config = _with_rope(config, args.rope, args.max_position_embeddings)
    hf.save_pretrained(model, config, args.out, dtype=args.dtype)
    print(f"wrote {args.out} (rope {rope_lib.to_string(config.rope)}, "
          f"max_position_embeddings {config.max_position_embeddings})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_orbax = commands.add_parser("hf-to-orbax", help="transformers directory -> yarn_jax model directory")
    to_orbax.add_argument("--hf", required=True, help="local transformers directory (config.json + *.safetensors)")
    to_orbax.add_argument("--out", required=True)
    to_orbax.add_argument("--rope", help="rope SPEC to store instead of the checkpoint's own")
    to_orbax.add_argument("--param-dtype", help="float32 (default) or bfloat16")
    to_orbax.set_defaults(run=hf_to_orbax)
    to_hf = commands.add_parser("orbax-to-hf", help="yarn_jax model directory -> transformers directory")
    to_hf.add_argument("--checkpoint", required=True, help="yarn_jax model directory")
    to_hf.add_argument("--out", required=True)
    to_hf.add_argument("--rope", help="rope SPEC to write instead of the checkpoint's own")
    to_hf.add_argument("--max-position-embeddings", type=int)
    to_hf.add_argument("--dtype", help="tensor dtype in the safetensors files (default: the parameters')")
    to_hf.set_defaults(run=orbax_to_hf)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
