"""Sphinx extension for the book: show readers the code that teaches, not the plumbing.

- nbdev reads comment lines such as ``#| export`` or ``#| default_exp core`` at the top of code cells.
  They mean nothing to a reader, so they are removed from every rendered code cell. A cell marked
  ``#| hide`` is removed from the page entirely.
- The setup cell at the top of each chapter (its first line starts with ``# Setup:``: choose the
  Keras backend, install the package in Colab) is not shown.
- Top-level ``assert`` statements are not shown: each chapter checks what it demonstrates, and those
  checks run whenever the notebook runs (nbval in CI, the book build, Colab), but on the page they are
  noise. A cell that holds nothing but checks shows only its output.

Every cell still runs when the book executes the notebook; only what the page displays changes.
"""
import ast
import re

from docutils import nodes

DIRECTIVE = re.compile(r"^\s*#\|\s*(\S+)")
SETUP_MARK = "# Setup:"


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


def strip_asserts(source: str) -> str:
    """`source` without its top-level assert statements (and the comment lines directly above
    one, which describe it). Code that does not parse is returned unchanged."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.splitlines()
    drop = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            first = stmt.lineno - 1
            while first > 0 and lines[first - 1].lstrip().startswith("#") and \
                    (first - 1) not in drop and _own_line_comment(lines, first - 1):
                first -= 1
            drop.update(range(first, stmt.end_lineno))
    kept = [line for i, line in enumerate(lines) if i not in drop]
    text = "\n".join(kept).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text)


def _own_line_comment(lines, i) -> bool:
    "A comment line that belongs to the statement below it (not after a blank line)."
    return i + 1 < len(lines) and lines[i + 1].strip() != ""


def _only_comments(source: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in source.splitlines())


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
        original = block.astext()
        text, names = strip_directives(original)
        if text.startswith(SETUP_MARK):
            text = ""
        elif "export" not in names and "exporti" not in names:
            text = strip_asserts(text)
        if _only_comments(text):
            text = ""
        has_output = any(c.get("nb_element") == "cell_code_output" for c in cell.children)
        if "hide" in names or (not text and not has_output):
            cell.parent.remove(cell)
        elif not text:
            block.parent.parent.remove(block.parent)
        elif text != original:
            block.replace_self(nodes.literal_block(text, text, **block.attributes))


def setup(app):
    app.connect("doctree-read", _on_doctree_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
