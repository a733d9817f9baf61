"""Sphinx configuration of the jhproxy-routes documentation (MyST Markdown, as JupyterHub's)."""

import jhproxy_routes

project = "jhproxy-routes"
author = "jhproxy-routes contributors"
copyright = "jhproxy-routes contributors"
version = release = jhproxy_routes.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_copybutton",
    "autodoc_traits",  # the configuration reference, generated from the traits' help
]
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = "jhproxy-routes"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
