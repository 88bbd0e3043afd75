"""Assembly of the self-contained HTML report: figures embedded as base64 PNG, CSS for phones and paper."""

from __future__ import annotations

from pathlib import Path

from .._artifacts import PAGE_CSS, embedded_png, escape
from ._base import SectionResult

__all__ = ["render_html"]

_CSS = (
    PAGE_CSS
    + """
td.partial { color: #8a4b00; white-space: normal; min-width: 9rem; }
p.note { background: #fff6e0; border-left: 4px solid #e69f00; padding: 0.4rem 0.7rem; margin: 0.5rem 0; }
"""
)
_escape = escape
_figure = embedded_png


def render_html(
    *,
    title: str,
    meta: list[str],
    sections: list[SectionResult],
    figures: Path,
    config_toml: str,
    reused: list[str] | tuple[str, ...] = (),
) -> str:
    """The report page as one string: no file or network access is needed to read it.

    The summary table gives, for each check, the condition that counts as held and the point of the run where
    it is judged; a check that holds there but not later (``Check.later``) is marked so, not a bare "yes".
    """
    checks = [(section, check) for section in sections for check in section.checks]
    passed = sum(check.passed for _, check in checks)
    early_only = sum(bool(check.passed and check.later) for _, check in checks)
    summary = f"{passed} of {len(checks)} predictions held where they are judged"
    if early_only:
        summary += (
            f"; {early_only} of them held there but not later in the run (marked \u201cyes, then no\u201d)"
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_escape(title)}</h1>",
        *[f'<p class="meta">{_escape(line)}</p>' for line in meta],
        '<h2 id="summary">What the theory predicts, and what was measured</h2>',
        f"<p>{_escape(summary)}.</p>",
        '<div class="scroll"><table><thead><tr><th>prediction</th><th>held if</th><th>judged at</th>'
        "<th>measured</th><th>held</th></tr></thead><tbody>",
    ]
    for section, check in checks:
        if check.passed and check.later:
            verdict, css = f"yes, then {check.later}", "partial"
        else:
            verdict, css = ("yes", "pass") if check.passed else ("no", "fail")
        parts.append(
            f'<tr><td><a href="#{_escape(section.name)}">{_escape(check.statement)}</a></td>'
            f"<td>{_escape(check.threshold)}</td><td>{_escape(check.judged_at)}</td>"
            f'<td>{_escape(check.measured)}</td><td class="verdict {css}">{_escape(verdict)}</td></tr>'
        )
    parts.append("</tbody></table></div>")
    parts.append("<nav><ol>")
    parts.extend(
        f'<li><a href="#{_escape(s.name)}">{_escape(s.title.split(". ", 1)[-1])}</a></li>' for s in sections
    )
    parts.append("</ol></nav>")
    for section in sections:
        parts.append(f'<h2 id="{_escape(section.name)}">{_escape(section.title)}</h2>')
        parts.extend(f'<p class="note">{_escape(note)}</p>' for note in section.notes)
        # on a phone the figure keeps a readable size and scrolls sideways instead of shrinking to a stamp
        image = _figure(figures / f"{section.name}.png", section.title)
        parts.append(f'<figure><div class="scroll">{image}</div>')
        parts.append('<p class="swipe">Swipe the figure sideways to see all of it.</p>')
        parts.append(f"<figcaption>{_escape(section.caption)}</figcaption></figure>")
        if section.highlights:
            parts.append('<div class="scroll"><table><tbody>')
            parts.extend(
                f"<tr><th>{_escape(label)}</th><td>{_escape(value)}</td></tr>"
                for label, value in section.highlights
            )
            parts.append("</tbody></table></div>")
        when = (
            f"reused from an earlier run, which computed it in {section.seconds:.1f} s"
            if section.name in reused
            else f"computed in {section.seconds:.1f} s"
        )
        parts.append(
            f'<p class="files">Figure: figures/{_escape(section.name)}.png and .svg; numbers: metrics.json, '
            f'key "sections.{_escape(section.name)}"; {when}.</p>'
        )
    parts.append('<h2 id="config">Configuration</h2>')
    parts.append(
        "<p>The resolved configuration (also in config.toml next to this page); pass it to <code>ntkit "
        "report --config</code> to run the same report again.</p>"
    )
    parts.append(f"<pre>{_escape(config_toml)}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
