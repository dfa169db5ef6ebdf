"The book's display filter (tools/book_nbdev.py): directives, setup cells and checks are hidden."
import pytest

from book_nbdev import strip_asserts, strip_directives

pytestmark = pytest.mark.one_backend


def test_directives_are_removed_and_named():
    text, names = strip_directives("#| export\n#| default_exp model\nx = 1\n")
    assert text == "x = 1" and names == {"export", "default_exp"}


def test_top_level_asserts_and_their_comments_are_hidden():
    source = ("y = f(x)\n"
              "print(y)\n"
              "# the result is positive\n"
              "assert y > 0, (\n"
              "    'multi-line message')\n"
              "z = 2\n")
    assert strip_asserts(source) == "y = f(x)\nprint(y)\nz = 2"


def test_a_comment_above_a_blank_line_stays():
    source = "# Step one: build it\n\nassert ok\nprint(1)\n"
    assert strip_asserts(source) == "# Step one: build it\n\nprint(1)"


def test_nested_asserts_stay_so_the_code_still_parses():
    source = "for v in values:\n    assert v > 0\nprint('done')\n"
    assert strip_asserts(source) == source.strip("\n")


def test_code_that_does_not_parse_is_unchanged():
    source = "%timeit f(x)\nassert True\n"
    assert strip_asserts(source) == source
