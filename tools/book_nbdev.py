"""Sphinx extension for the book: hide nbdev's notebook directives from rendered pages.

nbdev reads comment lines such as ``#| export`` or ``#| default_exp core`` at the top of code cells.
They mean nothing to a reader, so this extension removes those lines from every rendered code cell and
drops cells that consist only of directives. A cell marked ``#| hide`` is removed from the page entirely
(it still runs when the book executes the notebook).
"""
import re

from docutils import nodes

DIRECTIVE = re.compile(r"^\s*#\|\s*(\S+)")


def strip_directives(source: str):
    "Return (source without directive lines, set of directive names)."
    kept, names = [], set()
    for line in source.splitlines():
        m = DIRECTIVE.match(line)
        if m:
            names.add(m.group(1))
        else:
            kept.append(line)
    return "\n".join(kept).strip("\n"), names


def _cell_of(node):
    "The myst-nb cell container around a code cell's input block, or None."
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.container) and parent.get("nb_element") == "cell_code":
            return parent
        parent = parent.parent
    return None


def _on_doctree_read(app, doctree):
    for block in list(doctree.findall(nodes.literal_block)):
        cell = _cell_of(block)
        if cell is None or block.parent.get("nb_element") != "cell_code_source":
            continue
        text, names = strip_directives(block.astext())
        if not names:
            continue
        has_output = any(c.get("nb_element") == "cell_code_output" for c in cell.children)
        if "hide" in names or (not text and not has_output):
            cell.parent.remove(cell)
        elif not text:
            block.parent.parent.remove(block.parent)
        else:
            block.replace_self(nodes.literal_block(text, text, **block.attributes))


def setup(app):
    app.connect("doctree-read", _on_doctree_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
