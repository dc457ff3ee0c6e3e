"""Secure aggregation (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017) on ``cryptography``.

One concept per module:

- :mod:`.shamir`: t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 − 1).
- :mod:`.primitives`: X25519 key pairs, HKDF-SHA256 key agreement, AES-GCM sealing and
  ChaCha20 mask expansion into the ring Z/2^32.
- :mod:`.encoding`: clip → weight → stochastic rounding into Z/2^32, and the decoding of a sum.
- :mod:`.graph`: the k-regular neighbour graph and the reconstruction threshold.
- :mod:`.messages`: the four stages' requests and replies as plain dataclasses, and their
  conversion to and from Flower records.
- :mod:`.client` / :mod:`.server`: the two sides of the protocol as plain state machines; they
  import neither torch nor Flower.
"""
