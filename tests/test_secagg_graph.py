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
    assert graph.threshold(3, 0.01) == 2
    assert graph.threshold(5, 1.0) == 5
    assert graph.threshold(2, 1.0) == 2
