"""The built-in demo tasks: which pictures the demo hospitals get."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from simulations.scenarios import Scenario


class Task(StrEnum):
    DEMO = "demo"  # synthetic chest films (simulations.demo_data)
    FASHION_MNIST = "fashion-mnist"  # real Fashion-MNIST pictures (simulations.fashion_mnist)
    FASHION_MNIST_10 = "fashion-mnist-10"  # its ten classes, pictures only
    ECG12 = "ecg12"  # 12-lead ECGs, several findings a patient (simulations.ecg12)


def task_config(task: Task) -> dict[str, object]:
    """The config keys a task's data needs (the run's own ``--set`` values win over them)."""
    if task is Task.FASHION_MNIST_10:
        from simulations.fashion_mnist import CONFIG_10

        return dict(CONFIG_10)
    if task is Task.ECG12:
        from simulations.ecg12 import CONFIG

        return dict(CONFIG)
    return {}


def task_config_toml(task: Task) -> str:
    """:func:`task_config` as a run config file (``demo-data`` writes it beside the sites, for
    ``validate-data --config`` and ``fedmm server``); empty when the task needs no keys."""
    import json

    sections: dict[str, list[str]] = {}
    for dotted, value in task_config(task).items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n"
                   for section, lines in sections.items())


def generate_task(task: Task, out_dir: Path, *, sites: int, samples_per_site: int, seed: int,
                  scenario: Scenario, test_samples: int = 400) -> list[Path]:
    """Write the task's hospital folders and test folder under ``out_dir``."""
    if task is Task.FASHION_MNIST_10:
        from simulations.fashion_mnist import generate_fashion_mnist_10

        return generate_fashion_mnist_10(out_dir, sites=sites, samples_per_site=samples_per_site,
                                         seed=seed, scenario=scenario, test_samples=test_samples)
    if task is Task.ECG12:
        from simulations.ecg12 import generate_ecg12

        return generate_ecg12(out_dir, sites=sites, samples_per_site=samples_per_site,
                              seed=seed, scenario=scenario, test_samples=test_samples)
    if task is Task.FASHION_MNIST:
        from simulations.fashion_mnist import generate_fashion_mnist

        return generate_fashion_mnist(out_dir, sites=sites, samples_per_site=samples_per_site,
                                      seed=seed, scenario=scenario, test_samples=test_samples)
    from simulations.demo_data import generate_demo

    return generate_demo(out_dir, sites=sites, samples_per_site=samples_per_site, seed=seed,
                         scenario=scenario, test_samples=test_samples)
