"""The README's quick start stays true: two commands, and CI runs the test command word for word."""
import re

from conftest import ROOT


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def test_two_commands_and_ci_runs_the_test_command():
    main_job, tests = quick_start_commands()
    assert "resgraph check specs/" in main_job and "resgraph run compiled/digits_resnet examples/digits/samples" in main_job and "torch" not in main_job
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert main_job in ci and tests in ci                    # word for word
    assert ci.index(main_job) < ci.index(tests)              # the main job first, on a machine without torch
    assert " -o " not in main_job                            # compile's default folder, compiled/<name>/


def test_main_job_specs_exist():
    main_job, _ = quick_start_commands()
    for spec in re.findall(r"specs/\S+\.yaml", main_job):
        assert (ROOT / spec).exists(), spec


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_stay_inside_the_repository():
    """Every link in the README and docs/ is a web address or a file of this repository (users never
    see what lies outside it), and every #anchor names a heading of its file."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_relative_to(ROOT) or not file.exists():
                bad.append(f"{page.name}: {target} (outside the repository or missing)")
            elif anchor and file.suffix == ".md":
                heads = {_slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
                if anchor not in heads:
                    bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, bad


def test_the_user_guide_has_a_row_for_every_op():
    """Adding an op to the table without documenting it fails here (section 3.13 of the user guide)."""
    from resgraph.ops import OPS, USER_OPS
    text = (ROOT / "docs" / "spec-language.md").read_text()
    rows = re.search(r"### 3\.13 Ops\n(.*?)\n### ", text, re.S).group(1)
    table = [line for line in rows.splitlines() if line.startswith("| `")]
    documented = {op for line in table for op in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert set(USER_OPS) <= documented, sorted(set(USER_OPS) - documented)
    for op in USER_OPS:   # and each of its arguments is named in its row
        row = next(line for line in table if f"`{op}`" in line.split("|")[1])
        missing = [a for a in OPS[op].args if f"`{a}`" not in row]
        assert not missing, (op, missing)


# --- claims of the README and the guides that the code or a measurement decides ---------------------

def _bold(row: str) -> list[str]:
    return re.findall(r"\*\*([^*]+)\*\*", row)


def test_the_readmes_compile_figures_are_the_measured_ones_and_cite_them():
    """README quotes docs/onnx.md's resnet50 table (measured by bench/onnx_speed.py) figure for figure,
    and links it: whole process time, the ratios to the dynamo and legacy exporters, the in-process one."""
    onnx = (ROOT / "docs" / "onnx.md").read_text()
    bench = onnx[onnx.index("## Benchmarks"):]
    assert "bench/onnx_speed.py" in bench
    table = re.search(r"^\| resnet50 \| resgraph compile \|.*?\n\n", bench, re.S | re.M).group(0)
    whole = next(l for l in table.splitlines() if l.startswith("| whole process |"))
    in_process = next(l for l in table.splitlines() if l.startswith("| in process"))
    measured = _bold(whole) + [f for f in _bold(in_process) if f.endswith("×")]
    assert len(measured) == 4, (whole, in_process)
    readme = (ROOT / "README.md").read_text()
    row = next(l for l in readme.splitlines() if l.startswith("| ONNX back end"))
    assert re.findall(r"\d+(?:\.\d+)?(?: s\b|×)", row) == measured, (row, measured)
    assert "(docs/onnx.md#benchmarks)" in row


def _backticked_order(text: str, after: str) -> list[str]:
    tail = text[text.index(after) + len(after):]
    return re.findall(r"`([\w-]+)`", re.split(r"\(|, and|\. ", tail, maxsplit=1)[0])


def test_the_order_auto_takes_is_the_one_the_docs_give():
    from resgraph.runtime.session import AUTO_ORDER
    readme = (ROOT / "README.md").read_text()
    assert _backticked_order(readme, "`auto` takes the first usable one in a fixed order:") == list(AUTO_ORDER)
    guide = (ROOT / "docs" / "inference.md").read_text()
    assert _backticked_order(guide, "**How `auto` chooses**: the first usable back end in a fixed order:") \
        == list(AUTO_ORDER)
    assert "fastest usable" not in readme


def _doctor_lines(text: str) -> tuple[list[str], list[str]]:
    """(the labels of the header lines, the back ends' names in the table) of doctor's output."""
    head, _, table = text.partition("\nback ends\n")
    labels = [l[:12].strip() if len(l) > 12 and l[11] == " " else l.split(" ")[0] for l in head.splitlines()]
    names = [m for m in re.findall(r"^│ (\S+)", table, re.M)]
    return labels, names


def test_the_doctor_example_has_the_commands_shape_and_no_ones_own_path():
    """docs/inference.md's `resgraph doctor` block against the command run now: the same header lines
    in the same order (less those that depend on what this machine has installed), every back end in
    order, and no path of the machine it was copied from."""
    from conftest import run_cli
    from resgraph.runtime.doctor import PACKAGES
    from resgraph.runtime.session import BACKENDS
    guide = (ROOT / "docs" / "inference.md").read_text()
    block = re.search(r"```\n\$ resgraph doctor\n(.*?)```", guide, re.S).group(1)
    r = run_cli("doctor")
    assert r.returncode == 0, r.stderr
    (doc_labels, doc_names), (labels, names) = _doctor_lines(block), _doctor_lines(r.stdout)
    optional = (set(PACKAGES) - {"onnx", "onnxruntime", "torch", "tensorrt"}) | {"TensorRT", "torch CUDA", "ORT EPs"}
    assert [l for l in doc_labels if l not in optional] == [l for l in labels if l not in optional]
    assert set(doc_labels) - set(labels) <= optional, set(doc_labels) - set(labels)
    assert doc_names == names == list(BACKENDS)
    assert str(ROOT) not in block and not re.search(r"/(?:work|root)/", block)


def test_numbers_in_the_docs_yaml_read_as_numbers():
    """YAML 1.1 reads `1e-6` (no dot) as a string, which the checker refuses where a number goes: every
    number in exponent notation in a yaml block or an inline `key: value` of the README and docs/ must
    be one that resgraph's own YAML reader takes as a number."""
    from resgraph.errors import Diagnostics
    from resgraph.spec.yamlsrc import load_yaml
    number = re.compile(r"(?:^|[:\[,{]\s*)([-+]?\d[\d_]*(?:\.\d*)?[eE][-+]?\d+)(?=\s*(?:[,}\]#]|$))", re.M)
    bad = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        snippets = re.findall(r"```yaml\n(.*?)```", text, re.S)
        snippets += [s for s in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)) if ": " in s]
        for token in (t for s in snippets for t in number.findall(s)):
            y = load_yaml(token, page.name, Diagnostics())
            if y is None or not isinstance(y.plain(), float):
                bad.append(f"{page.name}: {token}")
    assert not bad, bad
