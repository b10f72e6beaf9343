"""The README's getting-started block runs as written on a fresh folder (training with the tiny
preset and few steps, so the suite stays short; everything else verbatim)."""
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def getting_started() -> list[str]:
    text = README.read_text()
    m = re.search(r"<!-- getting-started.*?-->\s*```bash\n(.*?)```\s*<!-- /getting-started -->", text, re.S)
    assert m, "README.md has no getting-started block"
    return [line.split("  #")[0].strip() for line in m.group(1).splitlines() if line.strip()]


def test_getting_started_runs_verbatim(tmp_path):
    cmds = getting_started()
    assert [c.split()[1] for c in cmds] == ["synth", "train", "predict", "evaluate"]
    bindir = Path(sys.executable).parent  # the `unetcu` script of this environment
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    for cmd in cmds:
        if cmd.startswith("unetcu train"):
            cmd += " --preset tiny --steps 20 --val-every 10 --n-synthetic 3 --no-progress"
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (cmd, r.stderr)
    assert "mean" in r.stdout and "seg" in r.stdout  # evaluate's table over the 8 examples
    assert len(list((tmp_path / "predictions").glob("*_prob.tif"))) == 8


def test_readme_shows_the_real_help():
    """The option lists the README quotes are the parsers' own (regenerate them when options change)."""
    text = README.read_text()
    env = dict(os.environ, COLUMNS="100")
    for cmd, start in (("train", "  --data"), ("synth", "usage:")):
        h = subprocess.run([sys.executable, "-m", "unetcu.cli", cmd, "-h"], capture_output=True, text=True, env=env).stdout
        block = h[h.index(start):].rstrip()
        assert block in text, f"README.md's `unetcu {cmd} -h` differs from the parser's"


def test_readme_shows_the_real_predict_help():
    """`unetcu predict -h` in the README: usage, description and arguments as the parser prints them
    (the options are an excerpt, each line of it the parser's own)."""
    text = README.read_text()
    env = dict(os.environ, COLUMNS="100")
    h = subprocess.run([sys.executable, "-m", "unetcu.cli", "predict", "-h"], capture_output=True, text=True, env=env).stdout
    assert h[:h.index("options:")] in text, "README.md's `unetcu predict -h` differs from the parser's"
    block = text[text.index("`unetcu predict -h`:"):]
    block = block[block.index("options (excerpt):"):block.index("```", block.index("options (excerpt):"))]
    for line in block.splitlines()[1:]:
        assert line in h.splitlines(), f"README.md's predict option line {line!r} is not the parser's"


def test_readme_layout_names_every_module_and_folder():
    """The README's Layout block matches the tree: every folder and file it names exists, and every
    module of the package and every benchmark is named in it."""
    import re
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    rows = re.findall(r"^(\S+/)\s+(.*?)(?=^\S|\Z)", block, flags=re.M | re.S)
    assert len(rows) >= 8
    for folder, body in rows:
        assert (root / folder).is_dir(), folder
        for name in re.findall(r"\b([A-Za-z_0-9]+\.(?:py|cu|cuh|sh|md))\b", body):
            assert (root / folder / name).is_file(), f"{folder}{name}"
    named = {folder: body for folder, body in rows}
    for folder in ("unetcu/", "unetcu/engines/", "unetcu/ops/", "benchmarks/"):
        for p in sorted((root / folder).glob("*.py")):
            if p.name != "__init__.py" and not (folder == "unetcu/ops/" and p.name != "_core.py"):
                assert p.name in named[folder], f"{folder}{p.name} is missing from the README's Layout"
