"""No code path under dispider_ros/ or launch/ runs text it was given as code or as a shell line.

An AST scan (so `model.eval()` and strings that merely mention eval are not flagged) fails on:
builtin eval/exec/compile/__import__ calls, any call with shell=True, os.system / os.popen /
os.exec*/spawn*, launch's PythonExpression (an eval of launch arguments), pickle/marshal
loads, torch.load without weights_only=True, yaml.load without a safe loader, and a literal
trust_remote_code=True. The limits that protect the nodes at run time (query length and rate,
image size, trust_remote_code off by default) are tested over DDS in test_graph_faults.py and
test_load_failures.py.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = sorted(p for folder in ("dispider_ros", "launch") for p in (REPO / folder).rglob("*.py"))
BUILTINS = {"eval", "exec", "compile", "__import__"}
DANGEROUS_ATTRS = {("os", "system"), ("os", "popen"), ("pickle", "load"), ("pickle", "loads"),
                   ("marshal", "load"), ("marshal", "loads"), ("subprocess", "getoutput"),
                   ("subprocess", "getstatusoutput")}


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def findings(source: str, name: str = "<src>"):
    """(line, what) for every forbidden construct in source."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.Name, ast.Attribute)) and \
                (getattr(node, "id", None) or getattr(node, "attr", None)) == "PythonExpression":
            found.append((node.lineno, "PythonExpression (evaluates launch arguments)"))
        if isinstance(node, (ast.ImportFrom,)) and any(a.name == "PythonExpression" for a in node.names):
            found.append((node.lineno, "imports PythonExpression"))
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if isinstance(node.func, ast.Name) and func[0] in BUILTINS:
            found.append((node.lineno, f"{func[0]}()"))
        if func[-2:] in DANGEROUS_ATTRS or (len(func) >= 2 and func[-2] == "os"
                                            and func[-1].startswith(("exec", "spawn"))):
            found.append((node.lineno, ".".join(func)))
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append((node.lineno, f"{'.'.join(func)}(shell=...)"))
        if func[-2:] == ("torch", "load"):
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        if func[-2:] == ("yaml", "load"):
            loader = keywords.get("Loader")
            if not (loader is not None and "Safe" in ".".join(_dotted(loader))):
                found.append((node.lineno, "yaml.load without a safe loader"))
        trusted = keywords.get("trust_remote_code")
        if isinstance(trusted, ast.Constant) and trusted.value is True:
            found.append((node.lineno, "trust_remote_code=True"))
    return found


def test_the_package_has_no_eval_exec_or_shell_on_input():
    assert SCANNED, "nothing to scan"
    report = {str(path.relative_to(REPO)): hits for path in SCANNED
              if (hits := findings(path.read_text(encoding="utf-8"), str(path)))}
    assert not report, report


@pytest.mark.parametrize("snippet", [
    "eval(text)", "exec(code)", "compile(s, 'f', 'exec')", "__import__(name)",
    "subprocess.run(cmd, shell=True)", "subprocess.Popen(cmd, shell=flag)", "os.system(cmd)",
    "os.popen(cmd)", "os.execvp('sh', args)", "pickle.loads(blob)", "torch.load(path)",
    "torch.load(path, weights_only=False)", "yaml.load(stream)",
    "from launch.substitutions import PythonExpression",
    "AutoModel.from_pretrained(path, trust_remote_code=True)",
])
def test_the_scan_catches_each_forbidden_construct(snippet):
    assert findings(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()", "model.to(device).eval()", "x = 'eval(text)'", "subprocess.Popen(argv, start_new_session=True)",
    "subprocess.run(argv, shell=False)", "torch.load(path, weights_only=True)",
    "yaml.safe_load(stream)", "yaml.load(stream, Loader=yaml.SafeLoader)",
    "AutoModel.from_pretrained(path, trust_remote_code=settings['trust_remote_code'])",
])
def test_the_scan_leaves_safe_code_alone(snippet):
    assert not findings(snippet), snippet
