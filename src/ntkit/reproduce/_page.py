"""The page of one reproduction: the paper's values beside ours, the checks, the figures, the settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._artifacts import PAGE_CSS, embedded_png, escape
from ._base import Outcome

__all__ = ["render_page"]


def render_page(
    *, title: str, meta: list[str], outcome: Outcome, figures: Path, settings: dict[str, Any]
) -> str:
    """The page as one string: figures embedded, so no file or network access is needed to read it."""
    passed = sum(check.passed for check in outcome.checks)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{PAGE_CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        *[f'<p class="meta">{escape(line)}</p>' for line in meta],
        f"<p>{escape(outcome.summary)}</p>",
    ]
    if outcome.notes:
        parts.append("<ul>" + "".join(f"<li>{escape(note)}</li>" for note in outcome.notes) + "</ul>")
    parts += [
        '<h2 id="paper">The paper beside this run</h2>',
        '<div class="scroll"><table><thead><tr><th>quantity</th><th>paper</th><th>this run</th><th>note</th>'
        "</tr></thead><tbody>",
    ]
    parts.extend(
        f"<tr><td>{escape(c.quantity)}</td><td>{escape(c.paper)}</td><td>{escape(c.ours)}</td>"
        f"<td>{escape(c.note)}</td></tr>"
        for c in outcome.comparisons
    )
    parts += [
        "</tbody></table></div>",
        '<h2 id="checks">What the theory predicts, and what was measured</h2>',
        f"<p>{passed} of {len(outcome.checks)} checks held on this run.</p>",
        '<div class="scroll"><table><thead><tr><th>prediction (threshold)</th><th>measured</th><th>held</th>'
        "</tr></thead><tbody>",
    ]
    for check in outcome.checks:
        verdict, css = ("yes", "pass") if check.passed else ("no", "fail")
        parts.append(
            f"<tr><td>{escape(check.statement)}</td><td>{escape(check.measured)}</td>"
            f'<td class="verdict {css}">{verdict}</td></tr>'
        )
    parts.append("</tbody></table></div>")
    parts.append('<h2 id="figures">Figures</h2>')
    for name, caption in outcome.figures.items():
        parts.append(f'<figure><div class="scroll">{embedded_png(figures / f"{name}.png", caption)}</div>')
        parts.append('<p class="swipe">Swipe the figure sideways to see all of it.</p>')
        parts.append(f"<figcaption>{escape(caption)}</figcaption></figure>")
        parts.append(f'<p class="files">figures/{escape(name)}.png and .svg</p>')
    parts.append('<h2 id="settings">Settings</h2>')
    parts.append("<p>Every number behind the figures and checks is in metrics.json next to this page.</p>")
    parts.append(f"<pre>{escape(json.dumps(settings, indent=1))}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
