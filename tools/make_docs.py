#!/usr/bin/env python
"""Write the documentation pages generated from the code (docs/config_keys.md, docs/ood_methods.md).

    python tools/make_docs.py            # rewrite the pages
    python tools/make_docs.py --check    # exit 1 naming the pages that are out of date

The configuration reference comes from the keys of vos_det/config/ (comments, declarations,
defaults and checks);
the OOD methods page from the methods' module docstrings (vos_det.reference_docs).
"""
import sys

from vos_det.cli import ToolParser, run_tool
from vos_det.reference_docs import write_generated_pages


def argument_parser():
    parser = ToolParser(description=__doc__.split("\n\n")[0], config=False, overrides=False)
    parser.add_argument("--check", action="store_true", help="write nothing; fail if a page is out of date")
    return parser


def main(args):
    """Write or check the pages; with --check, exit 1 when one is out of date."""
    changed = write_generated_pages(check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and changed:
        sys.exit("run `python tools/make_docs.py` and commit the pages")
    return changed


def run(argv=None):
    """The command line (``argv`` without the program name; default ``sys.argv[1:]``)."""
    return run_tool(main, argument_parser(), argv)


if __name__ == "__main__":
    run()
