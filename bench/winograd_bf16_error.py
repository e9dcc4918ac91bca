#!/usr/bin/env python3
"""Why the bf16 path keeps f32 Winograd: the error of a bf16 Winograd F(4x4, 3x3) product.

The bf16 convolutions round their *inputs and weights* to bf16 and sum the exact products in
f32 (`kernels::bf16`). A bf16 Winograd would have to round the *transformed* values instead:
U = G g G^T and V = B^T d B, whose coefficients (4, 5, 1/6, 1/24) and output transform (up to
8) scale and mix the inputs. This script measures both against the exact convolution, in
float64 apart from the bf16 roundings (round to nearest even, as `kernels::bf16::round`):

- direct bf16: round d and g, sum exactly;
- Winograd bf16: exact transforms, round U and V, sum exactly, exact output transform.

`python3 bench/winograd_bf16_error.py` (numpy only). The errors are relative to the outputs'
RMS and largest value, over random 4x4 output tiles of a 192-channel layer (the 64x64 model's
narrowest, where f32 Winograd is kept), for Gaussian inputs and for skewed, SiLU-like ones.
Result (bench/README.md, 2026-11-30): Winograd bf16 has about 10x the error of direct bf16
(2.5% against 0.23% RMS). F(2x2, 3x3), whose transforms only add, subtract and halve, is also
shown: it saves 2.25x the multiplications instead of 4x.
"""
import numpy as np

# F(4x4, 3x3) with the points 0, +-1, +-2, infinity (Lavin & Gray), as kernels::winograd.
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], float)
# F(2x2, 3x3) (points 0, +-1, infinity): coefficients 0, +-1, 1/2 only, 2.25x fewer
# multiplications instead of 4x.
BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def bf16(x):
    """Round to the nearest bf16 (ties to even), returned as float64."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def direct(d, g):
    """The 4x4 outputs of each 6x6 patch d[t, c] under the 3x3 kernels g[c]."""
    out = np.zeros((d.shape[0], 4, 4))
    for i in range(4):
        for j in range(4):
            out[:, i, j] = np.einsum('tcab,cab->t', d[:, :, i:i + 3, j:j + 3], g)
    return out


def winograd(u, v, at=AT):
    m = np.einsum('cij,tcij->tij', u, v)
    return np.einsum('ia,tab,jb->tij', at, m, at)


def winograd2(d, g, rnd):
    """F(2x2, 3x3) over the four 4x4 sub-patches of each 6x6 patch, as one 4x4 output."""
    u = rnd(np.einsum('ia,cab,jb->cij', G2, g, G2))
    out = np.zeros((d.shape[0], 4, 4))
    for i in (0, 2):
        for j in (0, 2):
            v = rnd(np.einsum('ia,tcab,jb->tcij', BT2, d[:, :, i:i + 4, j:j + 4], BT2))
            out[:, i:i + 2, j:j + 2] = winograd(u, v, AT2)
    return out


def main():
    rng = np.random.default_rng(0)
    channels, tiles = 192, 400
    print('| inputs | product | RMS error / RMS output | max error / max output |')
    print('|---|---|---:|---:|')
    for name in ['Gaussian', 'SiLU-like']:
        d = rng.standard_normal((tiles, channels, 6, 6))
        if name != 'Gaussian':
            d = np.maximum(d, 0) * 1.7 - 0.3
        g = rng.standard_normal((channels, 3, 3)) / np.sqrt(9 * channels)
        exact = direct(d, g)
        u = np.einsum('ia,cab,jb->cij', G, g, G)
        v = np.einsum('ia,tcab,jb->tcij', BT, d, BT)
        rms = np.sqrt((exact ** 2).mean())
        for label, y in [('direct, bf16 inputs', direct(bf16(d), bf16(g))),
                         ('Winograd, f64', winograd(u, v)),
                         ('Winograd, bf16 U and V', winograd(bf16(u), bf16(v))),
                         ('F(2x2, 3x3), bf16 U and V', winograd2(d, g, bf16))]:
            e = y - exact
            print(f'| {name} | {label} | {np.sqrt((e ** 2).mean()) / rms:.2e} '
                  f'| {np.abs(e).max() / np.abs(exact).max():.2e} |')


if __name__ == '__main__':
    main()
