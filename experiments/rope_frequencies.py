"""Per-dimension frequency scale of every context-extension method, for one attention head.

    python experiments/rope_frequencies.py [--rotary-dim 128 --theta 10000 --original 4096
                                            --factor 16 --out demo_out/rope_frequencies.png]

Prints, for a Llama-2-like head by default (d=128, base 10000, L=4096, s=16), the ratio
theta'_i / theta_i each method applies to pair i (1 = unchanged, 1/s = interpolated by s) and the
attention scaling, evaluated at the extended length s*L for the length-dependent methods; writes
the same as a plot (scale vs pair index, wavelength on a second panel).
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from yarn_jax import rope


def method_specs(rotary_dim: int, theta: float, original: int, factor: float) -> dict[str, rope.RopeSpec]:
    """One spec per method at the same head and scale. longrope gets illustrative long factors
    s^((i/(d/2-1))^2): near 1 for high frequencies, s for the lowest (real ones come from a search)."""
    common = dict(rotary_dim=rotary_dim, theta=theta, original_max_position_embeddings=original)
    half = rotary_dim // 2
    long_factor = tuple(float(factor ** ((i / (half - 1)) ** 2)) for i in range(half))
    specs = {}
    for method in rope.METHODS:
        extra = {}
        if method == "longrope":
            extra = dict(short_factor=(1.0,) * half, long_factor=long_factor)
        specs[method] = rope.RopeSpec(method, factor=factor, **common, **extra)
    return specs


def frequency_scales(specs: dict[str, rope.RopeSpec], seq_len: int) -> dict[str, tuple[np.ndarray, float]]:
    """method -> (theta'_i / theta_i, attention scaling) at the current length seq_len."""
    out = {}
    for method, spec in specs.items():
        base = np.asarray(rope.inv_freq(spec.replace(method="default", factor=1.0))[0], np.float64)
        freqs, scaling = rope.inv_freq(spec, seq_len)
        out[method] = (np.asarray(freqs, np.float64) / base, float(scaling))
    return out


def markdown_table(scales, wavelengths: np.ndarray, every: int) -> str:
    methods = list(scales)
    rows = ["| pair i | wavelength | " + " | ".join(methods) + " |", "|---:" * (len(methods) + 2) + "|"]
    last = len(wavelengths) - 1
    for i in sorted(set(range(0, len(wavelengths), every)) | {last}):
        cells = " | ".join(f"{scales[m][0][i]:.4f}" for m in methods)
        rows.append(f"| {i} | {wavelengths[i]:.1f} | {cells} |")
    rows.append("| attention scaling | | " + " | ".join(f"{scales[m][1]:.4f}" for m in methods) + " |")
    return "\n".join(rows)


def plot(scales, wavelengths: np.ndarray, original: int, factor: float, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_scale, ax_wave) = plt.subplots(1, 2, figsize=(13, 4.8))
    for method, (scale, _) in scales.items():
        ax_scale.plot(scale, label=method, lw=1.6, ls="--" if "dynamic" in method else "-")
    ax_scale.set(xlabel="pair index i", ylabel="theta'_i / theta_i", yscale="log", title="frequency scale")
    ax_scale.axhline(1 / factor, color="grey", lw=0.8, ls=":")
    ax_scale.legend(fontsize=8, ncol=2)
    for method, (scale, _) in scales.items():
        ax_wave.plot(wavelengths / scale, lw=1.2, label=method)
    ax_wave.axhline(original, color="black", lw=0.8, ls=":", label="L")
    ax_wave.axhline(original * factor, color="grey", lw=0.8, ls=":", label="s*L")
    ax_wave.set(xlabel="pair index i", ylabel="wavelength 2*pi/theta'_i (tokens)", yscale="log", title="wavelength")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotary-dim", type=int, default=128)
    parser.add_argument("--theta", type=float, default=10000.0)
    parser.add_argument("--original", type=int, default=4096, help="pretrained context L")
    parser.add_argument("--factor", type=float, default=16.0, help="scale s")
    parser.add_argument("--every", type=int, default=8, help="print every N-th pair")
    parser.add_argument("--out", default="demo_out/rope_frequencies.png")
    args = parser.parse_args(argv)

    specs = method_specs(args.rotary_dim, args.theta, args.original, args.factor)
    seq_len = int(args.original * args.factor)
    scales = frequency_scales(specs, seq_len)
    wavelengths = 2 * math.pi / np.asarray(rope.inv_freq(specs["default"])[0], np.float64)
    title = (f"d={args.rotary_dim}, base={args.theta:g}, L={args.original}, s={args.factor:g} "
             f"(length-dependent methods at l'=s*L={seq_len})")
    print(f"Frequency scale theta'_i/theta_i per method: {title}\n")
    print(markdown_table(scales, wavelengths, args.every))
    low, high = rope.correction_range(specs["yarn"])
    print(f"\nYaRN ramp: pairs i < {low} keep theta_i (r > beta_fast={specs['yarn'].beta_fast:g}), "
          f"pairs i > {high} get theta_i/s (r < beta_slow={specs['yarn'].beta_slow:g}).")
    plot(scales, wavelengths, args.original, args.factor, title, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
