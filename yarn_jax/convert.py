"""Checkpoint conversion between transformers directories, GGUF files and yarn_jax model directories.

    python -m yarn_jax.convert gguf-to-hf --gguf FILE --out DIR [--dtype float32|bfloat16|float16]
    python -m yarn_jax.convert hf-to-orbax --hf PATH --out DIR [--rope SPEC] [--param-dtype bfloat16]
    python -m yarn_jax.convert orbax-to-hf --checkpoint PATH --out DIR [--rope SPEC]
                                           [--max-position-embeddings N] [--dtype bfloat16]

``gguf-to-hf`` imports a llama.cpp checkpoint (llama, mistral, qwen2; dequantized) with its
tokenizer into a directory transformers, ``hf.from_pretrained`` and the ``hf:DIR`` tokenizer load.
``--rope`` sets the rope method written with the weights (e.g. the extended one after continued
pretraining: ``yarn:factor=16,original_max_position_embeddings=4096``); it defaults to the
checkpoint's own. The orbax directory is what ``init_from`` in a training config reads. Every
input path may be any checkpoint kind ``checkpoint.load`` knows; nothing is written to ``--out``
when an input is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys

from yarn_jax import checkpoint, hf
from yarn_jax import rope as rope_lib
from yarn_jax.errors import UserError, run_cli

DTYPES = ("float32", "bfloat16", "float16")


def _check_dtype(flag: str, value: str | None) -> None:
    if value is not None and value not in DTYPES:
        raise UserError(f"{flag} {value!r}: must be one of {', '.join(DTYPES)}")


def _check_export_target(out: str) -> None:
    """An export replaces ``out`` atomically; refuse anything that is not a previous export (or
    empty), so a mistyped --out never deletes a directory of other files."""
    if os.path.isfile(out):
        raise UserError(f"--out {out!r}: is a file; give a directory")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "config.json")):
        raise UserError(f"--out {out!r}: a directory holding other files (no config.json); give a new or empty "
                        "directory, or a previous export to replace")


def gguf_to_hf(args) -> None:
    from yarn_jax import gguf

    _check_dtype("--dtype", args.dtype)
    if not os.path.isfile(args.gguf):
        raise UserError(f"--gguf {args.gguf!r}: {'is a directory' if os.path.isdir(args.gguf) else 'no such file'}; "
                        "give a .gguf file")
    _check_export_target(args.out)
    out = gguf.convert(args.gguf, args.out, dtype=args.dtype or "float32")
    config = hf.read_config(out)
    print(f"wrote {out}: {config.architecture}, {config.num_params / 1e6:.1f}M parameters, "
          f"rope {rope_lib.to_string(config.rope)}, max_position_embeddings {config.max_position_embeddings}")


def hf_to_orbax(args) -> None:
    _check_dtype("--param-dtype", args.param_dtype)
    if os.path.exists(os.path.join(args.out, checkpoint.PARAMS_DIR)) or os.path.isfile(args.out):
        raise UserError(f"--out {args.out!r}: already holds a model checkpoint or is a file; choose a new directory")
    runtime = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    model, config, tokenizer = checkpoint.load(args.hf, rope=args.rope, **runtime)
    print(f"loaded {config.architecture}: {config.num_params / 1e6:.1f}M parameters, rope {rope_lib.to_string(config.rope)}")
    source_dir = args.hf if tokenizer.startswith("hf:") else None
    checkpoint.save_model(model, args.out, tokenizer_dir=source_dir)
    print(f"wrote {args.out}")


def orbax_to_hf(args) -> None:
    _check_dtype("--dtype", args.dtype)
    if args.max_position_embeddings is not None and args.max_position_embeddings < 1:
        raise UserError(f"--max-position-embeddings {args.max_position_embeddings}: must be a positive integer")
    _check_export_target(args.out)
    model, config, _ = checkpoint.load(args.checkpoint, rope=args.rope)
    if args.max_position_embeddings:
        config = config.replace(max_position_embeddings=args.max_position_embeddings)
    hf.save_pretrained(model, config, args.out, dtype=args.dtype)
    print(f"wrote {args.out} (rope {rope_lib.to_string(config.rope)}, "
          f"max_position_embeddings {config.max_position_embeddings})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m yarn_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    from_gguf = commands.add_parser("gguf-to-hf", help="GGUF file (llama.cpp) -> transformers directory")
    from_gguf.add_argument("--gguf", required=True, help="a .gguf file (llama, mistral or qwen2)")
    from_gguf.add_argument("--out", required=True, help="the transformers directory to write")
    from_gguf.add_argument("--dtype", help=f"tensor dtype written: {', '.join(DTYPES)} (default float32)")
    from_gguf.set_defaults(run=gguf_to_hf)
    to_orbax = commands.add_parser("hf-to-orbax", help="transformers directory (or GGUF file) -> yarn_jax model directory")
    to_orbax.add_argument("--hf", required=True, help="transformers directory, GGUF file or yarn_jax checkpoint")
    to_orbax.add_argument("--out", required=True)
    to_orbax.add_argument("--rope", help="rope SPEC to store instead of the checkpoint's own")
    to_orbax.add_argument("--param-dtype", help="float32 (default) or bfloat16")
    to_orbax.set_defaults(run=hf_to_orbax)
    to_hf = commands.add_parser("orbax-to-hf", help="yarn_jax model directory or workdir -> transformers directory")
    to_hf.add_argument("--checkpoint", required=True, help="yarn_jax model directory or training workdir")
    to_hf.add_argument("--out", required=True)
    to_hf.add_argument("--rope", help="rope SPEC to write instead of the checkpoint's own")
    to_hf.add_argument("--max-position-embeddings", type=int)
    to_hf.add_argument("--dtype", help="tensor dtype in the safetensors files (default: the parameters')")
    to_hf.set_defaults(run=orbax_to_hf)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
