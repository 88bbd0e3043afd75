"""Assembly of the self-contained HTML report: figures embedded as base64 PNG, CSS for phones and paper."""

from __future__ import annotations

from pathlib import Path

from .._artifacts import PAGE_CSS, embedded_png, escape
from ._base import SectionResult

__all__ = ["render_html"]

_CSS = PAGE_CSS
_escape = escape
_figure = embedded_png


def render_html(
    *,
    title: str,
    meta: list[str],
    sections: list[SectionResult],
    figures: Path,
    config_toml: str,
) -> str:
    """The report page as one string: no file or network access is needed to read it."""
    checks = [(section, check) for section in sections for check in section.checks]
    passed = sum(check.passed for _, check in checks)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_escape(title)}</h1>",
        *[f'<p class="meta">{_escape(line)}</p>' for line in meta],
        '<h2 id="summary">What the theory predicts, and what was measured</h2>',
        f"<p>{passed} of {len(checks)} predictions held on this run.</p>",
        '<div class="scroll"><table><thead><tr><th>prediction</th><th>measured</th><th>held</th></tr></thead>'
        "<tbody>",
    ]
    for section, check in checks:
        verdict = "yes" if check.passed else "no"
        css = "pass" if check.passed else "fail"
        parts.append(
            f'<tr><td><a href="#{_escape(section.name)}">{_escape(check.statement)}</a></td>'
            f'<td>{_escape(check.measured)}</td><td class="verdict {css}">{verdict}</td></tr>'
        )
    parts.append("</tbody></table></div>")
    parts.append("<nav><ol>")
    parts.extend(
        f'<li><a href="#{_escape(s.name)}">{_escape(s.title.split(". ", 1)[-1])}</a></li>' for s in sections
    )
    parts.append("</ol></nav>")
    for section in sections:
        parts.append(f'<h2 id="{_escape(section.name)}">{_escape(section.title)}</h2>')
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
        parts.append(
            f'<p class="files">Figure: figures/{_escape(section.name)}.png and .svg; numbers: metrics.json, '
            f'key "sections.{_escape(section.name)}"; computed in {section.seconds:.1f} s.</p>'
        )
    parts.append('<h2 id="config">Configuration</h2>')
    parts.append(
        "<p>The resolved configuration (also in config.toml next to this page); pass it to <code>ntkit "
        "report --config</code> to run the same report again.</p>"
    )
    parts.append(f"<pre>{_escape(config_toml)}</pre>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
