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
