"""The built-in demo tasks: which pictures the demo hospitals get."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from simulations.scenarios import Scenario


class Task(StrEnum):
    DEMO = "demo"  # synthetic chest films (simulations.demo_data)
    FASHION_MNIST = "fashion-mnist"  # real Fashion-MNIST pictures (simulations.fashion_mnist)
    FASHION_MNIST_10 = "fashion-mnist-10"  # its ten classes, pictures only


def task_config(task: Task) -> dict[str, object]:
    """The config keys a task's data needs (the run's own ``--set`` values win over them)."""
    if task is Task.FASHION_MNIST_10:
        from simulations.fashion_mnist import CONFIG_10

        return dict(CONFIG_10)
    return {}


def generate_task(task: Task, out_dir: Path, *, sites: int, samples_per_site: int, seed: int,
                  scenario: Scenario, test_samples: int = 400) -> list[Path]:
    """Write the task's hospital folders and test folder under ``out_dir``."""
    if task is Task.FASHION_MNIST_10:
        from simulations.fashion_mnist import generate_fashion_mnist_10

        return generate_fashion_mnist_10(out_dir, sites=sites, samples_per_site=samples_per_site,
                                         seed=seed, scenario=scenario, test_samples=test_samples)
    if task is Task.FASHION_MNIST:
        from simulations.fashion_mnist import generate_fashion_mnist

        return generate_fashion_mnist(out_dir, sites=sites, samples_per_site=samples_per_site,
                                      seed=seed, scenario=scenario, test_samples=test_samples)
    from simulations.demo_data import generate_demo

    return generate_demo(out_dir, sites=sites, samples_per_site=samples_per_site, seed=seed,
                         scenario=scenario, test_samples=test_samples)
