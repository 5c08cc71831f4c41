"""Build the documentation site into `docs/` and README.md from the notebooks in `nbs/`.

With Quarto on PATH this is exactly nbdev's own pipeline (`nbdev-docs`, then `nbdev-readme`).
Quarto is not installable on every machine: PyPI's `quarto-cli` is a source package that downloads
the Quarto binary from GitHub while it builds, so it fails without internet access. Without Quarto,
the same nbdev processing step (`proc_nbs`: hidden cells dropped, `show_doc` rendered, directives
applied) runs, and nbconvert renders each processed notebook to one HTML page in `docs/` with a
navigation bar, and index.ipynb to README.md. Usage: `python tools/build_docs.py [--readme-only]`.
"""
import argparse, html, json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _nbdev_native():
    subprocess.run(['nbdev-docs'], cwd=ROOT, check=True)
    subprocess.run(['nbdev-readme'], cwd=ROOT, check=True)


def _as_terminal(text):
    "What a terminal shows for `text`: each carriage return rewinds its line (fastprogress's console bars)"
    lines = [l.split('\r')[-1].rstrip() for l in text.split('\n')]
    return '\n'.join(l for l in lines if l.strip('█ ')) + ('\n' if text.endswith('\n') else '')


_CODE = re.compile(r'(```.*?```|`[^`\n]*`)', re.S)
_MATH = re.compile(r'\$\$(.+?)\$\$|(?<![\\$])\$([^$\n]+?)\$', re.S)


def _mathml(md):
    "Markdown with its `$...$` and `$$...$$` formulas turned into MathML, which browsers display without a script"
    from latex2mathml.converter import convert
    def math(m):
        display = m.group(1) is not None
        return convert((m.group(1) if display else m.group(2)).strip(), display='block' if display else 'inline')
    return ''.join(part if i % 2 else _MATH.sub(math, part) for i, part in enumerate(_CODE.split(md)))


_CDN_SCRIPTS = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>\s*|<!-- MathJax configuration -->\s*'
                          r'<script type="text/x-mathjax-config">.*?</script>\s*|<!-- (?:load|end of) mathjax[^>]*-->\s*',
                          re.S | re.I)


def _is_warning(o):
    return o.get('output_type') == 'stream' and o.get('name') == 'stderr' and 'Warning' in o.get('text', '')


def _prep(nb):
    "Ready a processed notebook for nbconvert: front matter back to a title, directives and bad metadata out"
    import nbformat, yaml
    cells, front = [], {}
    for c in nb.cells:
        if c.cell_type == 'markdown': c.source = _mathml(c.source)
        c.metadata.pop('execution', None)  # nbdev-test --save stores float timings, which nbformat's schema rejects
        if c.cell_type == 'raw' and c.source.startswith('---'):
            front = yaml.safe_load(c.source.strip().strip('-')) or {}
            continue
        if c.cell_type == 'code':
            c.outputs = [o for o in c.get('outputs', []) if not _is_warning(o)]
            for o in c.outputs:
                if o.get('output_type') == 'stream': o['text'] = _as_terminal(o['text'])
            c.source = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
            if not c.source and not c.get('outputs'): continue
        cells.append(c)
    if front.get('title'):
        head = f"# {front['title']}" + (f"\n\n> {front['description']}" if front.get('description') else '')
        cells.insert(0, nbformat.v4.new_markdown_cell(head))
    for i, c in enumerate(cells): c.id = f'c{i}'  # nbdev's processing makes some ids at random: rebuilds must be identical
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}
    return nb


def _page_name(nb_path: Path) -> str:
    from nbdev.config import nbpath2html
    return nbpath2html(nb_path).name


def _title(nb) -> str:
    "The page title: from the front matter nbdev's processing makes of the H1, else the first H1"
    import yaml
    for c in nb.cells:
        if c.cell_type == 'raw' and c.source.startswith('---'):
            t = (yaml.safe_load(c.source.strip().strip('-')) or {}).get('title')
            if t: return str(t)
        if c.cell_type == 'markdown':
            m = re.search(r'^#\s+(.+)$', c.source, re.M)
            if m: return m.group(1).strip()
    return 'fastprune'


NAV_CSS = """<style>
.fp-nav{position:sticky;top:0;z-index:10;background:#2c3e50;padding:.5em 1em;font-family:sans-serif}
.fp-nav a{color:#ecf0f1;margin-right:1.1em;text-decoration:none;font-size:.9em}
.fp-nav a.cur{font-weight:bold;text-decoration:underline}
</style>"""


def _nav(pages, current):
    cur = ' class="cur"'
    links = ''.join(f'<a href="{p}"{cur if p == current else ""}>{html.escape(t)}</a>' for p, t in pages)
    return f'{NAV_CSS}<nav class="fp-nav">{links}</nav>'


def _share_css(page_html, css):
    "Move the <head>'s inline stylesheets (the same for every page) into the shared `css` list; link it instead"
    head, sep, rest = page_html.partition('</head>')
    for block in re.findall(r'<style[^>]*>.*?</style>', head, flags=re.S):
        inner = re.sub(r'^<style[^>]*>|</style>$', '', block)
        if inner not in css: css.append(inner)
        head = head.replace(block, '', 1)
    return head + '<link rel="stylesheet" href="site.css">\n' + sep + rest


def _readme(proc: Path):
    import nbformat
    from nbconvert import MarkdownExporter
    nb = _prep(nbformat.read(proc/'index.ipynb', as_version=4))
    # README keeps text only: outputs of the quick start are shown as text, images are left to the docs site
    for c in nb.cells:
        if c.cell_type == 'code':
            c.outputs = [o for o in c.get('outputs', []) if 'text/plain' in o.get('data', {}) or o.get('output_type') == 'stream']
            for o in c.outputs:
                if 'data' in o: o['data'] = {'text/plain': o['data']['text/plain']}
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = body.replace('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->', '')
    body = re.sub(r'\]\(/([\w-]+\.html)', r'](docs/\1', body)  # doc links resolve inside the repository
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    (ROOT/'README.md').write_text('<!-- Generated from nbs/index.ipynb by tools/build_docs.py: edit the notebook -->\n\n' + body)


def _fallback(readme_only=False):
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.filters import markdown2html
    from nbdev.serve import proc_nbs
    from nbdev.quarto import refresh_quarto_yml
    refresh_quarto_yml()
    proc = proc_nbs(n_workers=0, file_glob='index.ipynb' if readme_only else '')
    _readme(proc)
    if readme_only: return
    nbs = sorted(proc.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name))
    mds = sorted(p for p in proc.glob('*.md'))
    pages = [(_page_name(p), _title(nbformat.read(p, as_version=4))) for p in nbs]
    pages += [(p.with_suffix('.html').name.lower(), p.stem.title()) for p in mds]
    out = ROOT/'docs'
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    exp, css = HTMLExporter(template_name='lab'), []
    for p, (page, title) in zip(nbs, pages):
        body, _ = exp.from_notebook_node(_prep(nbformat.read(p, as_version=4)))
        body = re.sub(r'href="/([\w-]+\.html)', r'href="\1', body)  # site-relative links work from any folder
        if 'class="jp-Mermaid' not in body:  # nbconvert's Mermaid loader (~420 lines per page) does nothing without a diagram
            body = re.sub(r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded".*?</script>', '', body, count=1, flags=re.S)
        body = _CDN_SCRIPTS.sub('', body)  # MathJax and require.js from a CDN: formulas are MathML already, nothing needs them
        body = body.replace('<title>Notebook</title>', f'<title>{html.escape(title)} – fastprune</title>')
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + _nav(pages, page), body, count=1)
        (out/page).write_text(_share_css(body, css))
    (out/'site.css').write_text('\n'.join(css))
    for p, (page, title) in zip(mds, pages[len(nbs):]):
        text = re.sub(r'^---\n.*?\n---\n', '', p.read_text(), flags=re.S)
        (out/page).write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)} – fastprune'
                              f'</title></head><body style="font-family:sans-serif;max-width:60em;margin:auto">'
                              f'{_nav(pages, page)}{markdown2html(text)}</body></html>')
    (out/'.nojekyll').touch()
    print(f'Rendered {len(pages)} pages into {out} (nbconvert fallback: Quarto not found)')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--readme-only', action='store_true', help='only regenerate README.md')
    ap.add_argument('--fallback', action='store_true', help='use the nbconvert renderer even when Quarto exists')
    a = ap.parse_args()
    if shutil.which('quarto') and not a.fallback and not a.readme_only: _nbdev_native()
    else: _fallback(a.readme_only)
