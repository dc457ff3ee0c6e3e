import numpy as np
import pytest

from common.secagg import primitives


def test_both_ends_derive_the_same_key_and_purposes_differ() -> None:
    a, b = primitives.generate_key_pair(), primitives.generate_key_pair()
    ab = primitives.agree(a.private, b.public, purpose="seal", context="r/1")
    assert ab == primitives.agree(b.private, a.public, purpose="seal", context="r/1")
    assert ab != primitives.agree(a.private, b.public, purpose="mask", context="r/1")
    assert ab != primitives.agree(a.private, b.public, purpose="seal", context="r/2")
    assert primitives.public_key_of(a.private) == a.public


def test_sealed_text_opens_only_unmodified_and_with_its_associated_data() -> None:
    key = primitives.random_seed()
    sealed = primitives.seal(key, b"share", associated=b"r/1/0->1")
    assert primitives.open_sealed(key, sealed, associated=b"r/1/0->1") == b"share"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad, associated in ((tampered, b"r/1/0->1"), (sealed, b"r/1/0->2"), (sealed[:5], b"")):
        with pytest.raises(primitives.SealError):
            primitives.open_sealed(key, bad, associated=associated)


def test_masks_are_deterministic_per_seed_and_look_uniform() -> None:
    seed = primitives.random_seed()
    mask = primitives.expand_mask(seed, 200_000)
    assert mask.dtype == np.uint32 and mask.size == 200_000
    assert np.array_equal(mask, primitives.expand_mask(seed, 200_000))
    assert not np.array_equal(mask, primitives.expand_mask(primitives.random_seed(), 200_000))
    counts = np.bincount((mask >> 24).astype(np.int64), minlength=256)
    chi2 = float(((counts - mask.size / 256) ** 2 / (mask.size / 256)).sum())
    assert chi2 < 340  # 255 degrees of freedom: P(chi2 > 340) < 0.0005


def test_mask_seed_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        primitives.expand_mask(b"short", 4)
