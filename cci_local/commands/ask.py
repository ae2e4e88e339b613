"""`cci-local ask` (a question put to each community's aligned model, side by side)
and `cci-local chat` (a conversation with one).  The work: cci_local/ask.py and
cci_local/chat.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import aligned_server_options, console, fail, json_option, out, seed_option


@click.command(name="ask")
@click.argument("question")
@click.argument("communities", nargs=-1, required=True)
@click.option("--base", help="The base MODEL the adapters were trained on (default: the "
              "registry's base).")
@click.option("--with-base", "include_base", is_flag=True,
              help="Add the base model's answer, for contrast.")
@click.option("--persona", is_flag=True,
              help="Add the base model told to answer as a member of each community.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Answers per model (seeds --seed, --seed + 1, ...).")
@seed_option
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--options", "options_text", metavar="'A;B;C'",
              help="Make it multiple-choice: the options, separated by semicolons.")
@click.option("--options-file", type=click.Path(exists=True, dir_okay=False),
              help="Multiple-choice options, one a line.")
@click.option("--unordered", is_flag=True,
              help="The options are categories, not a scale (total variation, not W1).")
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="text",
              show_default=True, help="How options are scored (as in `survey`).")
@aligned_server_options
@json_option("the answers")
@click.pass_obj
def ask_cmd(obj, question, communities, base, include_base, persona, samples, seed,
            max_tokens, temperature, options_text, options_file, unordered, scoring,
            aligned_server, aligned_name, as_json):
    """Put QUESTION (or - for standard input) to each of COMMUNITIES' aligned models and
    show their answers side by side, like a focus group; --with-base and --persona add
    contrast.  With --options, each model's whole distribution over the options (the
    survey stage's scoring) and how far apart the communities are.  Answers are
    stored; asking again makes no model call."""
    from ..ask import ask_question, parse_options, respondents
    from ..llm import default_model
    from ..store import select_communities

    if question == "-":
        question = sys.stdin.read()
    options = None
    if options_text and options_file:
        fail("give --options or --options-file, not both")
    if options_text:
        options = parse_options(options_text)
    elif options_file:
        options = parse_options(lines=Path(options_file).read_text(
            encoding="utf-8").splitlines())
    names = select_communities(obj.db, list(communities))
    with respondents(obj.db, names, default_model("base", base), include_base=include_base,
                     persona=persona, aligned_server=aligned_server,
                     aligned_name=aligned_name) as group:
        people = group.respondents
        streaming = not as_json and not options and len(people) * samples == 1
        if streaming:
            out.print(f"[bold]{people[0].label}[/bold]:", highlight=False)
        result = ask_question(obj.db, people, question, options=options, samples=samples,
                              seed=seed, max_tokens=max_tokens, temperature=temperature,
                              scoring=scoring, ordered=not unordered,
                              on_piece=(lambda label, k, text: click.echo(text, nl=False))
                              if streaming else None)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    if streaming:
        click.echo()
    elif options:
        for label, dist in result.distributions.items():
            out.print(f"[bold]{label}[/bold] ({result.methods[label]})", highlight=False)
            width = max(len(v) for v in options.values())
            for letter, text in options.items():
                p = dist[letter]
                out.print(f"  {letter}) {text:<{width}}  {'█' * round(30 * p):<30} {p:6.1%}",
                          highlight=False, markup=False)
        for (a, b), value in result.agreement.items():
            out.print(f"{a} vs {b}: representativeness {value:.3f} (1 = the same "
                      "distribution)", highlight=False)
    else:
        table = Table(box=box.SIMPLE_HEAD, title=escape(result.question), title_justify="left",
                      show_lines=True)
        table.add_column("#", justify="right")
        for label in result.answers:
            table.add_column(label, overflow="fold", ratio=1)
        for k in range(samples):
            table.add_row(str(k + 1), *[escape(v[k]) for v in result.answers.values()])
        out.print(table)
    console.print(f"{result.calls:,} model calls in {result.seconds:,.1f} s", style="dim",
                  highlight=False)


@click.command(name="chat")
@click.argument("community")
@click.option("--base", help="The base MODEL the adapter was trained on (default: the "
              "registry's base).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@seed_option
@click.pass_obj
def chat_cmd(obj, community, base, max_tokens, temperature, seed):
    """Talk with COMMUNITY's model, turn by turn, replies streamed as they are written.

    /switch r/NAME goes on with another community's model, /base shows the base
    model's answer to your last message, /quit ends.  Reads piped standard input a
    line at a time too.  The transcript is kept in the store."""
    from ..chat import run_chat
    from ..llm import Sampling, default_model

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def read_line(prompt):
        try:
            return input(prompt if interactive else "")
        except EOFError:
            return None

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        session = run_chat(obj.db, community, default_model("base", base), read_line=read_line,
                           write=write, sampling=Sampling(max_tokens=max_tokens,
                                                          temperature=temperature, seed=seed))
    except KeyboardInterrupt:
        write("\n")
        sys.exit(130)
    console.print(f"conversation {session.id}: {session.turns} turns kept in the store",
                  style="dim", highlight=False)
