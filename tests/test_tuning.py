"""The README's HyperTuning example, run as written on its 2-point grid at tiny size."""

import re

import pytest
import yaml

from conftest import REPO, TINY, TINY_PROTOCOL, make_tiny_dataset

pytest.importorskip("hyperopt", reason="hyperopt comes with .[test] / .[tune]")


def readme_blocks():
    """``{language: [code blocks]}`` of the README's Tuning section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Tuning", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for language, body in re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S):
        blocks.setdefault(language, []).append(body)
    return blocks


def test_readme_hypertuning_example_runs(workdir, capsys):
    blocks = readme_blocks()
    (params,), (fixed,), (script,) = blocks[""], blocks["yaml"], blocks["python"]
    assert len(re.findall(r"\[([^\]]*)\]", params)[0].split(",")) == 2  # a 2-point grid
    (workdir / "hyper.test").write_text(params)
    # the README's fixed settings, on the tiny dataset at tiny size
    settings = yaml.safe_load(fixed)
    settings.update(TINY, **TINY_PROTOCOL, dataset="tiny", n_dec_layers=1,
                    sid_levels=2, sid_codebook_size=4, beam_size=10,
                    data_path=make_tiny_dataset(workdir / "data"),
                    checkpoint_dir=str(workdir / "saved"))
    (workdir / "tune.yaml").write_text(yaml.safe_dump(settings))

    exec(compile(script, "README.md", "exec"), {})

    out = capsys.readouterr().out
    assert out.count("running parameters:") == 2
    best = re.search(r"best params: \{'learning_rate': ([0-9.e-]+)\}", out)
    assert best and float(best.group(1)) in (0.0005, 0.001)
    test_line = re.search(r"test result: (\{.*\})", out).group(1)
    assert "np.float64" not in test_line and "'ndcg@10': " in test_line
    exported = (workdir / "hyper_result.txt").read_text()
    assert exported.count("Test result:") == 2
