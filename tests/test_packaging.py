"""An installed dpcompat exposes one import name, ``dpcompat``, and lives beside Hugging Face's ``evaluate``."""
import configparser
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _folders() -> list[str]:
    """The checkout's folders that setup.cfg installs as sub-packages of dpcompat."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return sorted({name.split(".")[1] for name in config["options"]["packages"].split() if "." in name})


def _sources() -> list[str]:
    """The files an install reads: the build files, the root modules and every package folder."""
    return ["setup.cfg", "pyproject.toml", "README.md", *(p.name for p in ROOT.glob("*.py")), *_folders()]


def _pip_install(source: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True, text=True)


def _standin_evaluate(folder: Path) -> Path:
    """A distribution named ``evaluate`` with a top-level package ``evaluate``, as Hugging Face's has."""
    files = {"evaluate/__init__.py": "STANDIN = 'huggingface-evaluate'\n",
             "setup.py": "from setuptools import setup\nsetup(name='evaluate', version='0.4.0', packages=['evaluate'])\n"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _copy_sources(dest: Path) -> Path:
    """The files a source distribution holds, without the checkout's build leftovers or virtual env."""
    dest.mkdir()
    for name in _sources():
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, dest / name)
    return dest


def test_installed_next_to_huggingface_evaluate(tmp_path):
    site = tmp_path / "site"
    _pip_install(_copy_sources(tmp_path / "src"), site)
    _pip_install(_standin_evaluate(tmp_path / "hf"), site)

    top = sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin")
    assert top == ["dpcompat", "evaluate"], top
    installed = sorted(p.name for p in (site / "dpcompat").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert installed == _folders() and {"common", "evaluate", "export", "infer", "train"} <= set(installed)

    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import evaluate
        from dpcompat.evaluate.metrics.table import retrieval_metrics
        from dpcompat.cli import cli
        from dpcompat.common.contract import OUTPUTS
        assert evaluate.STANDIN == 'huggingface-evaluate', evaluate.__file__
        import dpcompat
        print(dpcompat.__file__)
    """)
    r = subprocess.run([sys.executable, "-c", script, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(site / "dpcompat" / "__init__.py")


def test_cli_from_a_checkout_runs_the_checkout(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    probe = "import runpy, sys; runpy.run_path(sys.argv[1])['import_checkout'](); import dpcompat; print(dpcompat.__file__)"
    r = subprocess.run([sys.executable, "-c", probe, str(ROOT / "checkout.py")], cwd=tmp_path, capture_output=True, text=True)
    assert r.stdout.strip() == str(ROOT / "__init__.py"), r.stderr
