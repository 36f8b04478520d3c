"""Show a feature dashboard: in the terminal with rich, as plain text for files, or a PNG histogram.

Token backgrounds scale with the activation relative to the feature's maximum, so weak
contexts look weak. Plain text (no colours) marks the example's activating token «like this»
and other tokens at >= half its activation ‹like this›.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..features.store.results import Example, FeatureDashboard

BLOCKS = " ▁▂▃▄▅▆▇█"


def _visible(token: str) -> str:
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def context_text(ex: Example, scale: float, plain: bool = False) -> Text:
    """One context with each token shaded by activation / `scale` (or marked, when `plain`)."""
    out = Text()
    for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts)):
        tok = _visible(tok)
        if plain:
            mark = ("«", "»") if i == ex.focus else ("‹", "›") if ex.act > 0 and act >= 0.5 * ex.act else ("", "")
            out.append(mark[0] + tok + mark[1])
        elif act > 0:
            x = min(act / scale, 1.0) if scale > 0 else 1.0
            style = f"black on rgb(255,{int(235 - 135 * x)},{int(205 - 205 * x)})"
            out.append(tok, style + (" bold underline" if i == ex.focus else ""))
        else:
            out.append(tok)
    return out


def sparkline(counts: list[int]) -> str:
    """Counts as one line of block characters (height relative to the largest)."""
    top = max(counts, default=0)
    return "".join(BLOCKS[0 if c == 0 else max(1, round(8 * c / top))] for c in counts) if top else ""


def _tokens(pairs: list[tuple[str, float]], n: int = 8) -> str:
    return "  ".join(f"{_visible(t)!r} {s:+.2f}" for t, s in pairs[:n]) or "-"


def dashboard_renderable(dash: FeatureDashboard, n_top: int = 10, n_interval: int = 2, plain: bool = False) -> Group:
    """A rich renderable of the whole dashboard."""
    head = Text(f"Feature {dash.feature} · layer {dash.layer} · {dash.model} · SAE {dash.sae}", style="bold")
    stats = Text(f"density {dash.density:.4%} of tokens ({dash.text_density:.1%} of texts) · {dash.fires:,} firings in "
                 f"{dash.n_texts:,} texts / {dash.n_tokens:,} tokens · max {dash.max_act:.3g} · mean {dash.mean_act:.3g} "
                 f"when firing")
    parts: list = [head, stats]
    if dash.histogram:
        counts = [c for _, _, c in dash.histogram]
        parts.append(Text(f"histogram (log bins) {dash.histogram[0][0]:.3g} {sparkline(counts)} {dash.histogram[-1][1]:.3g}"))
    parts.append(Text(f"promotes   {_tokens(dash.promoted)}"))
    parts.append(Text(f"suppresses {_tokens(dash.suppressed)}"))
    for e in dash.explanations:
        parts.append(Text(f"explanation: {e.text}  ({e.source}, {e.created_at[:10]})", style="italic"))
    if not dash.explanations:
        parts.append(Text(f"label: {dash.auto_label or '-'}  (automatic; add an explanation: qscope features explain)",
                          style="dim"))
    scale = dash.max_act

    def table(title: str, examples: list[Example]) -> Table:
        t = Table("act", "source", "context", title=title, title_justify="left", show_edge=False, box=None,
                  padding=(0, 1))
        for ex in examples:
            t.add_row(f"{ex.act:.3g}", ex.label or f"#{ex.text_index}", context_text(ex, scale, plain))
        return t

    if dash.top:
        parts.append(table(f"Top {min(n_top, len(dash.top))} contexts (one per text)", dash.top[:n_top]))
    else:
        parts.append(Text(f"never fired in {dash.n_texts:,} texts", style="yellow"))
    for iv in reversed(dash.intervals):
        if n_interval > 0:
            parts.append(table(f"Activations in [{iv.low:.3g}, {iv.high:.3g}): {iv.share:.1%} of firings",
                               iv.examples[:n_interval]))
    return Group(*parts)


def render_dashboard(dash: FeatureDashboard, console: Console | None = None, n_top: int = 10, n_interval: int = 2,
                     plain: bool = False) -> None:
    """Print the dashboard (to stderr by default, like every human-facing output of the CLI)."""
    (console or Console(stderr=True)).print(dashboard_renderable(dash, n_top, n_interval, plain))


def dashboard_text(dash: FeatureDashboard, width: int = 110, n_top: int = 10, n_interval: int = 2) -> str:
    """The dashboard as plain text (marks instead of colours), e.g. for docs or logs."""
    console = Console(file=io.StringIO(), width=width, no_color=True, color_system=None, highlight=False)
    console.print(dashboard_renderable(dash, n_top, n_interval, plain=True))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def histogram_png(dash: FeatureDashboard, path: str | Path) -> Path:
    """The activation histogram (log-spaced bins) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_png

    fig, ax = plt.subplots(figsize=(6, 3))
    if dash.histogram:
        lows, highs, counts = zip(*dash.histogram)
        ax.bar(lows, counts, width=[h - lo for lo, h in zip(lows, highs)], align="edge", color="#e8743b")
        ax.set_xscale("log")
    ax.set_xlabel("activation (when firing)")
    ax.set_ylabel("tokens")
    ax.set_title(f"feature {dash.feature}, layer {dash.layer}: density {dash.density:.3%}")
    fig.tight_layout()
    return save_png(fig, path)
