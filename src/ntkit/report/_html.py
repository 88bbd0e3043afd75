"""Assembly of the self-contained HTML report: figures embedded as base64 PNG, CSS for phones and paper."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ._base import SectionResult

__all__ = ["render_html"]

_CSS = """
:root { --ink: #1b1b1b; --muted: #555; --line: #d8d8d8; --pass: #0a7a3d; --fail: #b00020;
        --bg-soft: #f5f6f8; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 1rem 1rem 3rem; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0.6rem 0 0.4rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 0.6rem; padding-top: 0.6rem; border-top: 1px solid var(--line); }
p.meta { color: var(--muted); margin: 0.2rem 0; font-size: 0.95rem; }
figure { margin: 0.8rem 0; }
figure img { display: block; width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { margin-top: 0.5rem; font-size: 0.97rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; font-size: 0.95rem; margin: 0.6rem 0; }
th, td { text-align: left; vertical-align: top; padding: 0.35rem 0.5rem;
         border-bottom: 1px solid var(--line); }
th { background: var(--bg-soft); font-weight: 600; }
td.verdict { white-space: nowrap; font-weight: 600; }
td.pass { color: var(--pass); }
td.fail { color: var(--fail); }
nav ol { padding-left: 1.3rem; margin: 0.4rem 0; columns: 2 16rem; }
pre { background: var(--bg-soft); padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; border-radius: 4px; }
.files { font-size: 0.9rem; color: var(--muted); }
p.swipe { display: none; margin: 0.2rem 0 0; font-size: 0.85rem; color: var(--muted); }
a { color: #0b5cad; }
@media (max-width: 600px) {
  body { font-size: 15px; }
  main { padding: 0.6rem 0.6rem 2rem; }
  h1 { font-size: 1.35rem; }
  th, td { padding: 0.3rem 0.35rem; }
  figure .scroll img { width: 760px; max-width: none; }
  p.swipe { display: block; }
}
@media print {
  @page { margin: 1.4cm; }
  body { font-size: 10.5pt; }
  main { max-width: none; padding: 0; }
  nav, .files, p.swipe { display: none; }
  figure .scroll { overflow: visible; }
  figure .scroll img { width: 100%; }
  h2 { break-after: avoid; page-break-after: avoid; }
  figure, table, tr { break-inside: avoid; page-break-inside: avoid; }
  figure img { border: none; }
  a { color: inherit; text-decoration: none; }
  pre { white-space: pre-wrap; }
}
"""


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _figure(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_escape(alt)}">'


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
