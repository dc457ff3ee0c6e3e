import pytest

from common.secagg import graph


@pytest.mark.parametrize("clients", [2, 3, 10])
def test_small_federations_use_the_full_graph(clients: int) -> None:
    assert graph.neighbours(clients) == [[j for j in range(clients) if j != i]
                                         for i in range(clients)]


@pytest.mark.parametrize("clients", [11, 20, 64, 500])
def test_large_federations_use_a_symmetric_logarithmic_degree_graph(clients: int) -> None:
    neighbours = graph.neighbours(clients)
    degrees = {len(n) for n in neighbours}
    assert degrees == {graph.default_degree(clients)}
    assert max(degrees) <= 2 * (clients - 1).bit_length()
    for i, near in enumerate(neighbours):
        assert i not in near
        assert all(i in neighbours[j] for j in near)


def test_threshold_is_at_least_two_and_at_most_the_neighbourhood() -> None:
    assert graph.threshold(3, 0.5) == 2
    assert graph.threshold(4, 0.5) == 3
    assert graph.threshold(3, 0.01) == 2
    assert graph.threshold(5, 1.0) == 5
    assert graph.threshold(2, 1.0) == 2


@pytest.mark.parametrize(("holders", "colluding"), [(n, c) for n in range(2, 13)
                                                      for c in range(0, 4)])
def test_the_minimum_threshold_defeats_every_split_of_the_honest_holders(holders,
                                                                         colluding) -> None:
    """Brute force over the lying server's splits: the target and h_A honest holders told
    'u survived' give self-mask shares, h_B told 'u dropped' give key shares, c colluders
    give both. Below t_min some split reaches t of each; at t_min none does."""
    if colluding >= holders:
        return
    honest = holders - colluding

    def split_works(t: int) -> bool:
        return any(a + 1 + colluding >= t and (honest - 1 - a) + colluding >= t
                   for a in range(honest))

    least = graph.minimum_threshold(holders, colluding)
    assert not split_works(least)
    if least - 1 >= 2:
        assert split_works(least - 1)


def test_the_graph_follows_the_seed_and_the_server_cannot_pick_it() -> None:
    adverts = [bytes([i]) * 40 for i in range(30)]
    seed = graph.graph_seed("r/1", adverts)
    assert graph.graph_seed("r/1", list(reversed(adverts))) == seed  # order-free
    assert graph.graph_seed("r/2", adverts) != seed  # bound to the round
    assert graph.graph_seed("r/1", [*adverts[:-1], b"x" * 40]) != seed
    one, other = graph.neighbours(30, 10, seed), graph.neighbours(30, 10, b"other")
    assert one != other
    assert graph.neighbours(30, 10, seed) == one  # every site derives the same graph
