"""DP randomness from a cryptographic stream: ChaCha20 keystreams (``cryptography``) as uniform and
Gaussian draws.

DP-SGD's guarantee assumes noise and Poisson sampling nobody can predict. torch's generator is
a Mersenne Twister, whose state follows from 624 outputs; Opacus' ``secure_mode`` would fix that
but needs ``torchcsprng``, which does not install beside torch 2.13. So a site draws them from
:class:`RandomStream`: ChaCha20 under a 256-bit key from the operating system's CSPRNG in
deployments (from the run seed in simulations, reproducible and labelled as such).

- uniform: 64 bits of keystream per draw, the top 53 as a float64 in [0, 1);
- normal: Box–Muller on two uniforms (u₁ in (0, 1]); each Gaussian draw is the sum of four such
  draws divided by two, the floating-point mitigation of Holohan & Braghin (2021, §5.1, n = 2)
  that Opacus' ``secure_mode`` applies against attacks that read the low bits of one
  Box–Muller or Marsaglia sample (Jin et al. 2022). The cost is four draws per noise value
  (BENCHMARKS.md measures it per epoch).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

KEY_BYTES = 32
_TWO_PI = 2.0 * np.pi
_SCALE_53 = 1.0 / (1 << 53)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a run seed and names (simulations only: reproducible, not secret)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


class RandomStream:
    """An endless ChaCha20 keystream read as uniform or Gaussian float64 draws."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        if len(key) != KEY_BYTES:
            raise ValueError(f"the key must be {KEY_BYTES} bytes")
        self._encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    @classmethod
    def fresh(cls) -> RandomStream:
        """Keyed from the operating system's CSPRNG (deployments)."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_seed(cls, *parts: object) -> RandomStream:
        """Keyed from names and a seed (simulations: reproducible, not secret)."""
        text = "/".join(str(p) for p in parts).encode()
        return cls(hashlib.sha256(b"fedmm-randomness/" + text).digest())

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self._encryptor.update(bytes(8 * count)), dtype="<u8")

    def uniform(self, count: int) -> np.ndarray:
        """``count`` draws from [0, 1), 53 bits each."""
        return (self._words(count) >> np.uint64(11)).astype(np.float64) * _SCALE_53

    def _box_muller(self, count: int) -> np.ndarray:
        pairs = (count + 1) // 2
        u1 = 1.0 - self.uniform(pairs)  # (0, 1]: the logarithm is finite
        u2 = self.uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        return np.concatenate([radius * np.cos(_TWO_PI * u2),
                               radius * np.sin(_TWO_PI * u2)])[:count]

    def normal(self, count: int) -> np.ndarray:
        """``count`` standard normal draws, each the mean-preserving sum of four Box–Muller
        draws over 2 (see the module docstring)."""
        return self._box_muller(4 * count).reshape(4, count).sum(axis=0) / 2.0
