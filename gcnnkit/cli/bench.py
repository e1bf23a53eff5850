"""``gcnnkit bench [CONFIG ...]``: speed and memory of models against their plain-conv floor."""

from __future__ import annotations

import click

from gcnnkit.cli._common import set_option, to_json
from gcnnkit.tools.bench import CLOCKS, DEFAULT_GROUP, DEFAULT_REPEATS


@click.command("bench")
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False))
@set_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-sizes", default="1,64,256", show_default=True, help="Comma-separated batch sizes.")
@click.option(
    "--sizes",
    default=None,
    help="Comma-separated image sizes (square). Default: a CONFIG's data size; a preset's published size, else 28,64.",
)
@click.option("--repeats", type=int, default=DEFAULT_REPEATS, show_default=True, help="Interleaved timed repetitions.")
@click.option(
    "--backends",
    default=None,
    help="Comma-separated backends. Default: every installed one (presets) or the CONFIG's backend.",
)
@click.option(
    "--presets",
    default=None,
    help="Comma-separated presets to bench without CONFIG, or 'all' (default: gcnn-small,gcnn-tiny).",
)
@click.option(
    "--group", default=None, help=f"Group of the presets (default: the preset's published group, else {DEFAULT_GROUP})."
)
@click.option(
    "--min-time",
    type=float,
    default=0.02,
    show_default=True,
    help="Seconds: each timed sample repeats the step until it lasts about this long.",
)
@click.option("--per-layer/--no-per-layer", default=True, show_default=True, help="Also time every layer alone.")
@click.option("--export/--no-export", default=True, show_default=True, help="Also time the plain-PyTorch export.")
@click.option(
    "--clock",
    type=click.Choice(CLOCKS),
    default="wall",
    show_default=True,
    help="CPU only: 'cpu' times process CPU time, steadier on a machine shared with other jobs.",
)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option(
    "--channels-last", is_flag=True, help="Every contender (models, floor, export, input) in NHWC memory format."
)
@click.option(
    "--precisions",
    default="fp32",
    show_default=True,
    help="Comma-separated: fp32, bf16, fp16 (CUDA). Each contender runs in each, the forward pass under autocast "
    "as in training; every ratio is to the fp32 floor.",
)
@click.option(
    "--data",
    "data_config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Bench the input pipeline of this CONFIG instead: its images/s beside the model's training images/s, "
    "and peak RSS (gcnnkit.tools.databench).",
)
@click.option(
    "--max-images", type=int, default=4096, show_default=True, help="--data only: training images the pipeline reads."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report (ratios under ratio_to_floor).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON report to this file.")
def command(
    configs: tuple[str, ...],
    overrides: tuple[str, ...],
    device: str,
    batch_sizes: str,
    sizes: str | None,
    repeats: int,
    min_time: float,
    backends: str | None,
    presets: str | None,
    group: str | None,
    per_layer: bool,
    export: bool,
    clock: str,
    threads: int | None,
    channels_last: bool,
    precisions: str,
    data_config: str | None,
    max_images: int,
    as_json: bool,
    out: str | None,
) -> None:
    """Time each model (forward in eval mode, forward + backward in train mode), each layer, peak
    memory and build time beside the FLOOR: the plain nn.Conv2d stack with the same expanded shapes
    ([B, C·|G|, H, W]; same pooling, batch norm, activations). Repetitions are interleaved; times are
    medians and ratios (time / floor time) medians of per-repetition ratios.

    Without CONFIG, benches gcnnkit's presets (gcnn-small, gcnn-tiny) on every installed backend.

    \b
    Examples:
      gcnnkit bench --batch-sizes 64 --sizes 28
      gcnnkit bench configs/digits_c4.yaml --backends native,escnn --json
      gcnnkit bench --device cuda --batch-sizes 1,64,256 --sizes 28,64
      gcnnkit bench --data configs/folder_example.yaml --set data.in_memory=false
    """
    from pathlib import Path

    import torch

    from gcnnkit.core.errors import GcnnkitError
    from gcnnkit.run.paths import check_output_path
    from gcnnkit.tools.bench import config_cases, format_report, parse_int_list, preset_cases, resolve_device, run_bench

    if data_config is not None:
        from gcnnkit.tools.databench import format_data_report, run_data_bench

        if configs:
            raise GcnnkitError("--data CONFIG benches one config's input pipeline; give no other CONFIG")
        if max_images < 1:
            raise GcnnkitError(f"--max-images: expected a positive number, got {max_images}")
        report = run_data_bench(
            data_config, overrides, device=device, max_images=max_images, log=lambda m: click.echo(m, err=True)
        )
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(to_json(report) + "\n", encoding="utf-8")
        click.echo(to_json(report) if as_json else format_data_report(report))
        return
    dev = resolve_device(device)  # fails first, before anything is built
    if out is not None:
        check_output_path(out, "--out", folder=False)
    batches = parse_int_list(batch_sizes, "--batch-sizes")
    size_list = parse_int_list(sizes, "--sizes") if sizes else None
    backend_list = [b.strip() for b in backends.split(",") if b.strip()] if backends else None
    if threads is not None:
        if threads < 1:
            raise GcnnkitError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if configs:
        if presets:
            raise GcnnkitError("--presets applies without CONFIG only; give either CONFIG files or --presets")
        cases = config_cases(configs, overrides, backend_list)
    else:
        if overrides:
            raise GcnnkitError("--set applies to CONFIG files; without CONFIG use --presets, --group, --backends")
        names = [p.strip() for p in presets.split(",") if p.strip()] if presets else None
        cases = preset_cases(names, group, backend_list)
        if not cases[0].backends:
            raise GcnnkitError(
                "no backend is installed; install gcnnkit-native (pip install -e plugins/gcnnkit-native)"
            )
    report = run_bench(
        cases,
        device=dev,
        batch_sizes=batches,
        sizes=size_list,
        repeats=repeats,
        min_time=min_time,
        per_layer=per_layer,
        export=export,
        clock=clock,
        channels_last=channels_last,
        precisions=[p.strip() for p in precisions.split(",") if p.strip()],
        log=lambda msg: click.echo(msg, err=True),
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(to_json(report) + "\n", encoding="utf-8")
    click.echo(to_json(report) if as_json else format_report(report, layers=per_layer))
