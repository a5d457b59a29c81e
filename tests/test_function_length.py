"""No function of vos_det is over MAX_LINES lines of code (found with ast, nested ones included)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vos_det"
MAX_LINES = 100
# Function name -> why it may be longer.
ALLOWED = {
    "add_vos_config": "the commented key list: one line and one comment per config key, as detectron2's defaults.py",
}


def code_lines(function: ast.AST) -> int:
    """Lines from the ``def`` to the end of the body, its docstring not counted (the
    documentation of arguments and errors is not logic to split)."""
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def long_functions(root: Path):
    """(path:line name, code lines) of every function of the ``.py`` files under ``root`` over MAX_LINES."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(node) > MAX_LINES:
                found.append((f"{path.relative_to(root.parent)}:{node.lineno} {node.name}", code_lines(node)))
    return found


def test_no_function_is_over_100_lines():
    too_long = [(where, lines) for where, lines in long_functions(PACKAGE) if where.split()[-1] not in ALLOWED]
    assert not too_long, f"split these into named steps (at most {MAX_LINES} lines each): {too_long}"


def test_the_count_sees_a_long_method_and_skips_the_docstring(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    docstring = '        """Doc.\n\n        More.\n        """\n'

    def method(name, statements):
        body = "".join(f"        x{i} = {i}\n" for i in range(statements))
        return f"    def {name}(self):\n{docstring}{body}"

    # def + 99 statements = 100 lines, its 4-line docstring not counted.
    (package / "m.py").write_text("class C:\n" + method("fits", MAX_LINES - 1))
    assert long_functions(package) == []
    (package / "m.py").write_text("class C:\n" + method("fits", MAX_LINES - 1) + "\n" + method("too_long", MAX_LINES))
    assert long_functions(package) == [(f"pkg/m.py:{MAX_LINES + 7} too_long", MAX_LINES + 1)]
