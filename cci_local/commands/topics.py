"""`cci-local topics`: topics fitted jointly over the communities, and chunk rows.
The stage itself: cci_local/topics.py."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from .common import DocsPerSecond, advance, communities_argument, console, note, out, seed_option


@click.command()
@communities_argument()
@click.option("--embedder", type=click.Choice(["wordllama", "tfidf", "minilm"]),
              default="wordllama", show_default=True)
@click.option("--reducer", type=click.Choice(["umap", "pca"]), default="umap", show_default=True)
@click.option("--clusterer", type=click.Choice(["hdbscan", "kmeans"]),
              help="hdbscan (default) finds the topic count and drops outliers; kmeans "
                   "cuts exactly --topics K topics and keeps every document.")
@click.option("--topics", "n_topics", type=click.IntRange(min=2),
              help="Target topic count: K topics from KMeans (implies --clusterer kmeans).")
@click.option("--min-cluster-size", type=click.IntRange(min=2),
              help="HDBSCAN's smallest topic (default: the paper's 40, scaled down to 1% of "
                   "a corpus under 4,000 documents, never below 5).")
@click.option("--selection", type=click.Choice(["eom", "leaf"]), default="eom",
              show_default=True,
              help="HDBSCAN's cluster selection: eom (excess of mass) keeps large stable "
                   "topics, leaf the finest ones and more outliers.")
@click.option("--split/--no-split", default=True, show_default=True,
              help="Split degenerate structure: a topic over --max-topic-share, or fewer "
                   "than --min-topics topics, is clustered again on its own.")
@click.option("--max-topic-share", "max_share", type=click.FloatRange(0.01, 1.0),
              default=0.25, show_default=True,
              help="Share of the clustered documents above which a topic is dominant.")
@click.option("--min-topics", type=click.IntRange(min=1), default=12, show_default=True,
              help="Fewer topics than this is degenerate (capped at one per two minimum "
                   "clusters of documents).")
@click.option("--keywords", "n_keywords", type=click.IntRange(min=1), default=10,
              show_default=True)
@click.option("--chunk-docs", nargs=2, type=click.IntRange(min=1), default=(30, 50),
              show_default=True, help="Documents per community per chunk: MIN MAX.")
@click.option("--max-chunks", type=click.IntRange(min=1), default=5, show_default=True,
              help="Chunk rows per topic at most.")
@click.option("--min-communities", type=click.IntRange(min=1),
              help="Communities a chunk row needs (default: 80% of them, as in the paper).")
@seed_option
@click.option("--force", is_flag=True, help="Refit even if these settings were fitted before.")
@click.pass_obj
def topics(obj, communities, embedder, reducer, clusterer, n_topics, min_cluster_size, selection,
           split, max_share, min_topics, n_keywords, chunk_docs, max_chunks, min_communities,
           seed, force):
    """Fit topics jointly over COMMUNITIES (default: all) and cut chunk rows.

    \b
    By default HDBSCAN with excess-of-mass selection finds the topics, and any
    topic holding more than a quarter of the clustered documents (or too few
    topics) is clustered again on its own with leaf selection, because
    communities that share a domain otherwise come out as one topic."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from ..topics import TopicParams

    params = TopicParams(embedder=embedder, reducer=reducer, clusterer=clusterer,
                         min_cluster_size=min_cluster_size, selection=selection, split=split,
                         max_share=max_share, min_topics=min_topics, n_topics=n_topics,
                         n_keywords=n_keywords, chunk_min_docs=chunk_docs[0],
                         chunk_max_docs=max(chunk_docs), max_chunks=max_chunks,
                         min_communities=min_communities, seed=seed)
    columns = (TextColumn("embedding"), BarColumn(bar_width=24), MofNCompleteColumn(),
               DocsPerSecond(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("embed", total=None)
        summary = obj.topics(communities, params=params, force=force,
                             progress=advance(bar, task))
    _print_topics(summary)


def _print_topics(summary) -> None:
    names = list(summary.topics[0]["communities"]) if summary.topics else []
    table = Table(box=box.SIMPLE_HEAD, title=f"topics (run {summary.run_id})",
                  title_justify="left")
    table.add_column("topic", justify="right")
    table.add_column("keywords", overflow="fold")
    table.add_column("size", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("chunk rows", justify="right")
    for t in summary.topics:
        total = sum(t["communities"].values()) or 1
        shares = [f"{100 * t['communities'][n] / total:.0f}%" for n in names]
        table.add_row(str(t["topic"]), ", ".join(t["keywords"][:8]), f"{t['size']:,}", *shares,
                      str(t["chunk_rows"]))
    out.print(table)
    sil = (f"; silhouette {summary.silhouette:.2f} (shuffled topics: "
           f"{summary.silhouette_shuffled:.2f})" if summary.silhouette is not None else "")
    out.print(f"{len(summary.topics)} topics over {summary.n_documents:,} documents; "
              f"{summary.n_outliers:,} outliers dropped{sil}; "
              f"{sum(t['chunk_rows'] for t in summary.topics)} chunk rows", highlight=False)
    for text in summary.notes:
        note(text)
    if summary.reused:
        out.print("already fitted with these documents and settings (--force refits)",
                  style="dim", highlight=False)
