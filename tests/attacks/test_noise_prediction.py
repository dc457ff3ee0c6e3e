"""Nobody who sees a site's random draws can predict its next ones. A Mersenne Twister (what
torch's generator, and so Opacus without ``secure_mode``, is) gives its whole state away in
624 outputs: the attack below rebuilds it and predicts every later draw exactly. Against the
ChaCha20 stream fedmm draws DP noise and Poisson sampling from, the same attack predicts
nothing."""

from __future__ import annotations

import random

import numpy as np

from common.randomness import RandomStream

N = 624


def _untemper(y: int) -> int:
    """Invert MT19937's output tempering (each xor-shift undone by fixed-point iteration)."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    x = y
    for _ in range(4):
        x = y ^ ((x << 7) & 0x9D2C5680)
    y = x
    for _ in range(2):
        x = y ^ (x >> 11)
    return x & 0xFFFFFFFF


def predict(outputs: list[int], count: int) -> list[int]:
    """The next ``count`` 32-bit outputs of a Mersenne Twister that produced ``outputs``."""
    clone = random.Random()
    clone.setstate((3, (*(_untemper(y) for y in outputs[-N:]), N), None))
    return [clone.getrandbits(32) for _ in range(count)]


def words(stream: RandomStream, count: int) -> list[int]:
    """The stream's output as 32-bit words (what an observer of its draws could learn)."""
    return [int(w) for w in np.frombuffer(stream._encryptor.update(bytes(4 * count)), "<u4")]


def test_a_mersenne_twister_is_predicted_from_624_outputs() -> None:
    generator = random.Random(int.from_bytes(np.random.bytes(8), "big"))
    seen = [generator.getrandbits(32) for _ in range(N)]
    assert predict(seen, 1000) == [generator.getrandbits(32) for _ in range(1000)]


def test_the_chacha20_stream_is_not() -> None:
    stream = RandomStream.fresh()
    seen = words(stream, N)
    guessed, actual = predict(seen, 1000), words(stream, 1000)
    assert sum(g == a for g, a in zip(guessed, actual, strict=True)) <= 1
