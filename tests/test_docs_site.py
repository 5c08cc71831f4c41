"""The docs site in `docs/` works in a real browser: the index and a tutorial page load in headless Chromium,
show their title and heading, and every image on them decodes and renders.

The site is what `python tools/build_docs.py` writes (one HTML page per notebook, page name = notebook name
without its numeric prefix). The committed `docs/` is what is checked (file times in a fresh clone say nothing about freshness); only
when a page is missing is the site built here with `tools/build_docs.py --fallback` (nbconvert renderer).
The tests skip, saying so, only where no Chromium is installed (Debian: `apt-get install chromium`).
"""
import base64, io, json, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/'docs'
# (page, source notebook, title shown in the browser tab, H1 heading, minimum number of images)
INDEX = ('index.html', 'index.ipynb', 'fastprune', None, 0)
TUTORIAL = ('tut_quickstart.html', '11_tut_quickstart.ipynb', 'Quick start', 'Quick start', 2)
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--no-default-browser-check',
         '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-extensions',
         '--disable-dev-shm-usage', '--mute-audio', '--hide-scrollbars']


def _find_chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome'):
        if p := shutil.which(name): return p


@pytest.fixture(scope='module')
def chromium():
    exe = _find_chromium()
    if exe is None:
        pytest.skip("docs-site browser test skipped: no Chromium found on PATH (looked for chromium, chromium-browser, "
                    "google-chrome); install it, e.g. `apt-get install chromium` on Debian")
    r = subprocess.run([exe, '--version'], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or 'chrom' not in r.stdout.lower():  # e.g. Ubuntu's chromium-browser stub asking for snap
        pytest.skip(f"docs-site browser test skipped: {exe} is not a working Chromium ({(r.stdout + r.stderr).strip()[:200]})")
    return exe


@pytest.fixture(scope='module')
def site(chromium):
    "`docs/` as committed; built with tools/build_docs.py only where a checked page is missing"
    if not all((DOCS/page).exists() for page, *_ in (INDEX, TUTORIAL)):
        r = subprocess.run([sys.executable, 'tools/build_docs.py', '--fallback'], cwd=ROOT, capture_output=True,
                           text=True, timeout=1200)
        assert r.returncode == 0, f"tools/build_docs.py --fallback failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    for page, *_ in (INDEX, TUTORIAL): assert (DOCS/page).exists(), f"the docs build wrote no {page}"
    return DOCS


def _run(exe, tmp_path, *args, timeout=120):
    "Run headless Chromium with a throw-away profile; return its stdout"
    prof = tmp_path/'profile'
    prof.mkdir(exist_ok=True)
    r = subprocess.run([exe, *FLAGS, f'--user-data-dir={prof}', *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"chromium failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return r.stdout


# A probe page: it loads the page under test in a same-origin iframe (file:// pages are same-origin with
# --allow-file-access-from-files), waits for every image, and writes what the browser sees into #result,
# which --dump-dom then prints.
PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>probe</title></head><body>
<iframe id="page" src="%s" style="width:1280px;height:900px"></iframe><pre id="result">pending</pre>
<script>
document.getElementById('page').addEventListener('load', async () => {
  const d = document.getElementById('page').contentDocument;
  const imgs = Array.from(d.images);
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  document.getElementById('result').textContent = JSON.stringify({
    title: d.title,
    h1: Array.from(d.querySelectorAll('h1')).map(h => h.textContent.trim()),
    links: Array.from(d.querySelectorAll('nav a')).map(a => a.getAttribute('href').replace(/^\.\//, '')),
    images: imgs.map(i => ({src: (i.getAttribute('src') || '').slice(0, 22), w: i.naturalWidth, h: i.naturalHeight,
                            shown: i.getBoundingClientRect().width > 0})),
    math: Array.from(d.querySelectorAll('math')).map(m => { const r = m.getBoundingClientRect(); return [r.width, r.height]; }),
  });
});
</script></body></html>"""


def _probe(exe, tmp_path, page):
    probe = tmp_path/f'probe_{page}'
    probe.write_text(PROBE % (DOCS/page).as_uri())
    out = _run(exe, tmp_path, '--allow-file-access-from-files', '--virtual-time-budget=15000', '--dump-dom', probe.as_uri())
    m = re.search(r'<pre id="result">(.*?)</pre>', out, re.S)
    assert m and m.group(1) != 'pending', f"the probe never saw {page} load; DOM dump:\n{out[:2000]}"
    import html
    return json.loads(html.unescape(m.group(1)))


def _screenshot(exe, tmp_path, page, size=(1280, 2400)):
    png = tmp_path/f'{page}.png'
    _run(exe, tmp_path, f'--screenshot={png}', f'--window-size={size[0]},{size[1]}', '--virtual-time-budget=15000',
         (DOCS/page).as_uri())
    assert png.exists() and png.stat().st_size > 0, f"no screenshot of {page}"
    from PIL import Image
    return Image.open(png).convert('RGB')


def _check_page(exe, tmp_path, page, nb, title, heading, min_images):
    seen = _probe(exe, tmp_path, page)
    assert title in seen['title'] and 'fastprune' in seen['title'], f"{page}: browser title is {seen['title']!r}"
    h1 = [h.rstrip('¶').strip() for h in seen['h1']]  # nbconvert appends a '¶' anchor link to headings
    if heading is not None: assert heading in h1, f"{page}: H1 headings are {seen['h1']}, expected {heading!r}"
    assert 'tut_quickstart.html' in seen['links'] and 'index.html' in seen['links'], f"{page}: nav links {seen['links']}"
    imgs = seen['images']
    assert len(imgs) >= min_images, f"{page}: {len(imgs)} images, expected at least {min_images}"
    broken = [i for i in imgs if not (i['w'] > 0 and i['h'] > 0 and i['shown'])]
    assert not broken, f"{page}: images that did not render: {broken}"
    return seen


@pytest.mark.slow
def test_index_page(chromium, site, tmp_path):
    seen = _check_page(chromium, tmp_path, *INDEX)
    # every tutorial the repository has is reachable from the index's navigation bar
    tuts = sorted(re.sub(r'^\d+_', '', p.stem) + '.html' for p in (ROOT/'nbs').glob('*_tut_*.ipynb'))
    assert tuts and set(tuts) <= set(seen['links']), f"tutorials missing from the nav bar: {set(tuts) - set(seen['links'])}"
    shot = _screenshot(chromium, tmp_path, INDEX[0], size=(1280, 900))
    assert len(shot.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 1, "the index screenshot is blank"


@pytest.mark.slow
def test_tutorial_page_shows_its_plots(chromium, site, tmp_path):
    page = TUTORIAL[0]
    seen = _check_page(chromium, tmp_path, *TUTORIAL)
    # the saved plots are embedded PNGs that decode to real pictures (not empty or one-colour images)
    from PIL import Image
    raw = (site/page).read_text()
    pngs = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', raw)
    files = [src for src in re.findall(r'<img[^>]+src="([^"]+\.png)"', raw)]  # Quarto writes figures as files
    assert len(pngs) + len(files) >= TUTORIAL[4], f"{page}: {len(pngs)} embedded and {len(files)} linked PNGs"
    pics = [Image.open(io.BytesIO(base64.b64decode(b))) for b in pngs] + [Image.open(site/f) for f in files]
    for im in pics:
        assert im.width > 100 and im.height > 100, f"{page}: a {im.size} image is too small to be a plot"
        assert len(im.convert('RGB').getcolors(maxcolors=1 << 20) or range(1 << 20)) > 2, f"{page}: a plot is one colour"
    # what the browser paints: a tall screenshot holds text and the first plots, so many colours
    shot = _screenshot(chromium, tmp_path, page)
    colours = shot.getcolors(maxcolors=1 << 20) or range(1 << 20)
    assert len(colours) > 50, f"{page}: the screenshot has only {len(colours)} colours: blank page?"
    assert seen['images'][0]['w'] > 100


# Pages are read offline (that is how the docs are read here): nothing may come from a CDN or a font server.
EXTERNAL = re.compile(r'<script[^>]+src=["\']?(?:https?:)?//|<link[^>]+href=["\']?(?:https?:)?//'
                      r'|@import\s+(?:url\()?["\']?(?:https?:)?//|@font-face[^}]*url\(["\']?(?:https?:)?//', re.I)


def test_no_page_loads_anything_from_the_internet():
    "No external script, stylesheet or font in any committed page or the shared stylesheet"
    files = sorted(DOCS.glob('*.html')) + [DOCS/'site.css']
    assert len(files) > 5, f"docs/ has only {len(files)} files"
    bad = {f.name: m.group(0) for f in files if (m := EXTERNAL.search(f.read_text()))}
    assert not bad, f"pages that load from the internet: {bad}"


@pytest.mark.slow
def test_formulas_render_without_a_script(chromium, site, tmp_path):
    "The criteria page's formulas are MathML laid out by the browser itself: boxes of real size, pixels on screen"
    raw = (DOCS/'criteria.html').read_text()
    formulas = re.findall(r'<math\b.*?</math>', raw, re.S)
    assert len(formulas) >= 5, "the criteria page lost its formulas"
    assert 'mathjax' not in raw.lower()
    seen = _probe(chromium, tmp_path, 'criteria.html')
    assert len(seen['math']) == len(formulas) and all(w > 5 and h > 5 for w, h in seen['math']), seen['math']
    one = tmp_path/'formula.html'
    one.write_text(f'<!DOCTYPE html><html><body style="margin:0;background:#fff;font-size:40px">{formulas[0]}</body></html>')
    png = tmp_path/'formula.png'
    _run(chromium, tmp_path, f'--screenshot={png}', '--window-size=400,120', one.as_uri())
    from PIL import Image
    im = Image.open(png).convert('L')
    dark = sum(1 for v in im.getdata() if v < 128)
    assert dark > 50, f"the formula screenshot has {dark} dark pixels: nothing was drawn"
