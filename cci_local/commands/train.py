"""`cci-local train`: a community's LoRA adapter, exported as a GGUF adapter.
The stage itself: cci_local/train/."""

from __future__ import annotations

import json

import click
from rich import box
from rich.table import Table

from .common import console, fail, interrupted, json_option, out, progress_bar, seed_option


@click.command(name="train")
@click.argument("community")
@click.option("--base", help="The base MODEL: a GGUF (embedded, gguf:PATH, a registry name) or a "
              "Hugging Face folder (default: the registry's base).")
@click.option("--trainer", type=click.Choice(["peft", "mlx"]), default="peft", show_default=True,
              help="peft: PyTorch (CPU, CUDA, MPS); mlx: mlx-lm (Apple silicon).")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=3.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Examples per optimizer step.")
@click.option("--micro-batch", type=click.IntRange(min=1),
              help="Examples per forward pass; gradient accumulation makes up the rest "
              "(default: 4, or fewer to fit --memory).")
@click.option("--rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=32.0,
              show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--target", "targets", multiple=True,
              help="Module to adapt (repeatable; default: every linear layer of a block).")
@click.option("--max-len", type=click.IntRange(min=16),
              help="Cut examples at this many tokens (default: none; memory follows the "
              "longest pair).")
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs: open (CommInst, the default), template, or both.")
@click.option("--max-examples", type=click.IntRange(min=1), help="Train on a seeded sample.")
@click.option("--split-by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Train on the random split's train rows, or on the "
              "unseen-topic split's (no held-out topic seen; for survey --split topic).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
              show_default=True, help="Where to train; with --dry-run, any device (plan a "
              "Mac run on a Linux box).")
@click.option("--4bit", "four_bit", is_flag=True, help="4-bit (nf4) base weights: QLoRA on "
              "CUDA (bitsandbytes).")
@click.option("--mlx-bits", type=click.Choice(["4", "8", "none"]), default="4",
              show_default=True, help="mlx: train on the base quantized to 4 or 8 bits "
              "(none: fp16).")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None,
              help="Recompute activations in the backward pass: much less memory, ~30% slower "
              "(default: on for CUDA, MPS and mlx, and on the CPU when --memory needs it).")
@click.option("--chunked-loss/--no-chunked-loss", default=True, show_default=True,
              help="The loss over answer tokens in chunks: never the whole tokens x vocabulary "
              "logits.")
@click.option("--lora-layers", type=click.IntRange(min=1),
              help="LoRA on the last N blocks only (default: every block).")
@click.option("--memory", type=click.FloatRange(min=0.1), metavar="GIB",
              help="Memory budget in GiB (default: 75% of this machine's RAM, or of the GPU's "
              "memory on CUDA); settings are fitted to it before any work, and a run that "
              "cannot fit is refused.")
@click.option("--dedup", type=click.Choice(["none", "exact", "near"]), default="near",
              show_default=True, help="Remove duplicate answers before training: exact (same "
              "text up to case and spaces) or near (also 5-gram Jaccard >= 0.8); the first "
              "by id is kept.")
@click.option("--template-epochs", type=click.IntRange(min=1), metavar="N",
              help="Template pairs (real posts word for word) in at most N epochs; later "
              "epochs are over the other pairs (a run of template pairs only ends there).")
@click.option("--dp-epsilon", type=click.FloatRange(min=0, min_open=True), metavar="EPS",
              help="Differentially private training (DP-SGD, Opacus; pip install "
              "'cci-local[dp]') within this epsilon per training pair.")
@click.option("--dp-delta", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="DP's delta [default: 1/(10 n) for n examples].")
@seed_option
@click.option("--dry-run", is_flag=True,
              help="Print the plan and a memory estimate; train nothing.")
@json_option("the plan (--dry-run)")
@click.pass_obj
def train_cmd(obj, community, base, trainer, steps, epochs, lr, batch_size, micro_batch,
              rank, alpha, dropout, targets, max_len, kinds, max_examples, split_by,
              checkpoint_every, device, four_bit, mlx_bits, grad_checkpoint, chunked_loss,
              lora_layers, memory, dedup, template_epochs, dp_epsilon, dp_delta, seed, dry_run,
              as_json):
    """Train COMMUNITY's LoRA adapter and export it as a GGUF adapter (llama.cpp, Ollama).

    Resumes a killed run from its last checkpoint; a finished run with the same
    data and settings is reused.  The settings are fitted to --memory first.
    """
    from ..llm import default_model
    from ..train import TrainConfig, plan

    config = TrainConfig(rank=rank, alpha=alpha, dropout=dropout, lr=lr, epochs=epochs,
                         steps=steps, batch_size=batch_size,
                         micro_batch=micro_batch or TrainConfig.micro_batch,
                         max_len=max_len, seed=seed, checkpoint_every=checkpoint_every,
                         device=device, load_in_4bit=four_bit,
                         gradient_checkpointing=grad_checkpoint, chunked_loss=chunked_loss,
                         lora_layers=lora_layers,
                         mlx_bits=None if mlx_bits == "none" else int(mlx_bits),
                         target_modules=tuple(targets) or TrainConfig.target_modules,
                         dedup=dedup, template_epochs=template_epochs, dp_epsilon=dp_epsilon,
                         dp_delta=dp_delta)
    if dp_delta is not None and dp_epsilon is None:
        raise click.UsageError("--dp-delta goes with --dp-epsilon")
    pinned = frozenset(name for name, given in (("micro_batch", micro_batch),
                                                ("gradient_checkpointing", grad_checkpoint))
                       if given is not None)
    base = default_model("base", base)
    kinds = tuple(kinds) or ("open",)
    if dry_run:
        p = plan(obj.db, community, base, config, trainer=trainer, kinds=kinds,
                 max_examples=max_examples, split_by=split_by, memory=memory, pinned=pinned)
        if as_json:
            click.echo(json.dumps({"model": base, **p.as_dict()}, indent=2))
        else:
            print_plan(p, base, config)
        if not p.fits:
            from ..train.estimate import refusal

            fail(refusal(p))
        return
    if as_json:
        raise click.UsageError("--json is for --dry-run (the plan)")
    bar = progress_bar("training")
    state = {}

    def on_step(point):
        if "task" not in state:
            state["task"] = bar.add_task("steps", total=point["total"],
                                         completed=point["step"] - 1)
        bar.update(state["task"], completed=point["step"],
                   description=f"loss {point['loss']:.3f}, {point['tokens_per_s']:,.0f} tok/s")
        if not console.is_terminal and point["step"] % max(1, point["total"] // 10) == 0:
            console.print(f"step {point['step']}/{point['total']}: loss {point['loss']:.3f}, "
                          f"{point['tokens_per_s']:,.0f} tokens/s", highlight=False)

    def on_plan(p):
        print_plan(p, base, config, brief=True)

    try:
        with bar:
            row = obj.train(community, base=base, config=config, trainer=trainer, kinds=kinds,
                            max_examples=max_examples, on_step=on_step, split_by=split_by,
                            memory=memory, pinned=pinned, on_plan=on_plan)
    except KeyboardInterrupt:
        interrupted("run the same command again to continue from the last checkpoint")
    verb = "already trained" if row["reused"] else "trained"
    out.print(f"r/{row['community']}: {verb} on {row['examples']:,} examples, {row['steps']} "
              f"steps, final loss {row['final_loss']:.3f}", highlight=False)
    print_mitigations(json.loads(row["settings"]))
    out.print(f"adapter:   {row['gguf']}", highlight=False, soft_wrap=True)
    out.print(f"before it leaves this machine: `cci-local audit r/{row['community']}`, then "
              f"`cci-local adapters export r/{row['community']} -o DIR` (with an Ollama "
              "Modelfile)", highlight=False, soft_wrap=True)


def print_mitigations(settings: dict) -> None:
    """What dedup removed, and the privacy a DP run spent."""
    removed = settings.get("dedup_removed")
    if removed is not None:
        out.print(f"dedup ({settings['dedup']}): removed {removed['exact']:,} exact and "
                  f"{removed['near']:,} near duplicate answers", highlight=False)
    if settings.get("template_epochs"):
        out.print(f"template pairs in at most {settings['template_epochs']} epoch(s)",
                  highlight=False)
    if dp := settings.get("dp"):
        out.print(f"differential privacy: epsilon {dp['epsilon_spent']:.2f} at delta "
                  f"{dp['delta']:.2g} (noise multiplier {dp['noise_multiplier']:.3f}, "
                  f"sampling rate {dp['sample_rate']:.3f}, clip {dp['max_grad_norm']:g})",
                  highlight=False)


def print_plan(p, base, config, *, brief: bool = False) -> None:
    """The plan as a table (``brief``: the settings and the estimate in three lines)."""
    settings = (f"{p.trainer} on {p.device}, weights {p.dtype}, micro-batch {p.micro_batch} x "
                f"{p.accumulation}, gradient checkpointing "
                f"{'on' if p.checkpointing else 'off'}, "
                f"{'chunked' if p.chunked_loss else 'full-logits'} loss")
    if brief:
        out.print(f"plan: {settings}", highlight=False, soft_wrap=True)
        out.print(f"memory: peak ~{p.peak_gib:.2f} GiB of a {p.budget_gib:.1f} GiB budget "
                  f"({p.budget_from})", highlight=False, soft_wrap=True)
        for change in p.changed:
            out.print(f"  to fit: {change}", highlight=False, soft_wrap=True)
        return
    table = Table(box=box.SIMPLE_HEAD, title="training plan (nothing trained)",
                  title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    s = p.shape
    rows = [
        ("base", f"{base}: {s.params / 1e9:.2f}B parameters, {s.layers} layers, hidden "
                 f"{s.hidden}, vocabulary {s.vocab:,}"),
        ("trainer", settings),
        ("data", f"{p.examples:,} examples, {p.answer_tokens:,} answer tokens, longest "
                 f"{p.longest:,} tokens ({p.tokens_counted})"),
        ("steps", f"{p.steps:,} optimizer steps of {config.batch_size} examples "
                  f"({p.accumulation} micro-batches of {p.micro_batch})"),
        ("LoRA", f"rank {config.rank}, alpha {config.alpha:g}, dropout {config.dropout:g} on "
                 f"{', '.join(config.target_modules)} of {p.lora_layers} blocks: "
                 f"{p.lora_params / 1e6:.2f}M parameters"),
        ("schedule", f"AdamW lr {config.lr:g}, cosine, {config.warmup:.0%} warm-up"),
    ]
    rows += [(f"memory: {k}", f"{v:.2f} GiB") for k, v in p.memory.items()]
    rows.append(("memory: training (estimate)", f"{p.total_gib:.2f} GiB"))
    if p.loading_gib > p.total_gib:
        rows.append(("memory: loading the base", f"{p.loading_gib:.2f} GiB (a GGUF is "
                     "dequantized to fp32 in torch first)"))
    rows.append(("memory: peak (estimate)", f"{p.peak_gib:.2f} GiB"))
    rows.append(("memory: budget", f"{p.budget_gib:.2f} GiB ({p.budget_from}): "
                 + ("fits" if p.fits else "DOES NOT FIT")))
    rows += [("fitted", c) for c in p.changed]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
