"""The runner's static pages: an executed notebook becomes one HTML page with its figures
embedded (no server, no asset folder), committed for full runs, git-ignored for smoke runs."""

import base64

import nbformat

from prlib.config import REPO_ROOT
from prlib.runner import pages_dir, run_notebook, write_page


def test_a_run_notebook_becomes_a_page_with_its_figure(tmp_path, monkeypatch):
    """A tiny notebook (a figure drawn with Agg, as the workbook's are, and a printed path) run
    through the runner's kernel: the figure is a PNG output of its cell, and the page carries it
    inline, with the path relative to the repository."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell("SMOKE: bool = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("# A tiny notebook"),
        nbformat.v4.new_code_cell(
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([0, 1], [1, 0])\n"
            "ax.set_title('a line')\n"
            "from prlib.config import REPO_ROOT\nprint(REPO_ROOT / 'figures' / 'tiny.png')"),
        nbformat.v4.new_code_cell("ax.set_title('later')  # the same figure: not shown twice")]
    path = tmp_path / "07_tiny.ipynb"
    nbformat.write(nb, path)
    out = run_notebook(path, out_dir=tmp_path / "run")
    executed = nbformat.read(out, as_version=4)
    pngs = [o["data"]["image/png"] for c in executed.cells if c.cell_type == "code"
            for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 and base64.b64decode(pngs[0])[:4] == b"\x89PNG"
    page = write_page(out, tmp_path / "pages", "07_tiny")
    html = page.read_text()
    assert page.name == "07_tiny.html" and "A tiny notebook" in html
    assert f'src="data:image/png;base64,{pngs[0].strip()}' in html  # embedded, no file beside
    assert 'alt="a line"' in html  # the figure's titles as its alternative text
    assert "figures/tiny.png" in html and str(REPO_ROOT) not in html
    # the theme's styles once per folder, linked from the page's head, not copied into it
    head = html[:html.index("</head>")]
    css = (tmp_path / "pages" / "notebook.css").read_text()
    assert '<link rel="stylesheet" href="notebook.css"/>' in head and "<style" not in head
    assert len(css) > 10_000 and ".jp-Notebook" in css and ".jp-Notebook" not in html


def test_full_run_pages_are_committed_and_smoke_pages_are_not():
    assert pages_dir(smoke=False) == REPO_ROOT / "docs" / "notebooks"
    assert pages_dir(smoke=True).is_relative_to(REPO_ROOT / "build")  # git-ignored


def test_the_readme_links_every_notebooks_page():
    from prlib.runner import list_notebooks

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [p.stem for p in list_notebooks()
               if f"](docs/notebooks/{p.stem}.html)" not in readme]
    assert not missing, f"README's notebook table links no page for {missing}"


def test_every_notebook_has_a_committed_page_that_links_the_shared_style_sheet():
    from prlib.runner import PAGE_CSS, list_notebooks

    folder = pages_dir(smoke=False)
    assert (folder / PAGE_CSS).is_file()
    for nb in list_notebooks():
        page = folder / f"{nb.stem}.html"
        assert page.is_file(), f"no static page for {nb.stem}: run it in full (make notebook)"
        html = page.read_text(encoding="utf-8")
        head = html[:html.index("</head>")]
        assert f'href="{PAGE_CSS}"' in head and "<style" not in head, page.name


def test_a_page_keeps_the_mermaid_loader_only_when_it_has_a_diagram(tmp_path):
    """nbconvert's lab template puts a Mermaid loader (~420 lines of script) into every page;
    a page without a diagram drops it, one with a diagram keeps it (and MathJax stays)."""
    pages = {}
    for name, text in [("01_plain", "Text with $n$ requests."),
                       ("02_diagram", "```mermaid\ngraph TD; A-->B\n```")]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(text)]
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, path)
        pages[name] = write_page(path, tmp_path / "pages", name).read_text()
    assert "mermaid.esm" not in pages["01_plain"] and "mathjax" in pages["01_plain"].lower()
    assert "Text with" in pages["01_plain"]
    assert "mermaid.esm" in pages["02_diagram"] and 'class="jp-Mermaid"' in pages["02_diagram"]
