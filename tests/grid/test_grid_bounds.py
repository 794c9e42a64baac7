"""A grid file cannot make memzoo-grid write outside --out, hang or recurse: its name is one plain
path component, its YAML aliases expand to a bounded size and never refer to themselves, and one
memzoo-grid at a time runs a grid directory."""

import os
import time

import pytest
import yaml

from zoo.core.dir_lock import exclusive_dir
from zoo.grid.runner import load_grid, main
from zoo.grid.safe_yaml import load_bounded_yaml

STUDY = {"mqar": {"base": ["trainer.max_steps=1"], "axes": {"memory": ["none"]}}}


def write(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".", "", "x y", 5])
def test_a_grid_name_that_is_not_one_plain_path_component_is_refused(tmp_path, name):
    path = write(tmp_path, yaml.safe_dump({"name": name, "studies": STUDY}))
    with pytest.raises(ValueError, match=r"grid name .* must be one plain name .*results go to --out/<name>/ and nowhere else"):
        load_grid(path)


def test_a_refused_grid_name_writes_nothing_outside_out(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"name": "../victim", "studies": STUDY}))
    with pytest.raises(ValueError, match="must be one plain name"):
        main([path, "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


@pytest.mark.parametrize("study", ["..", "../x", "a/b"])
def test_a_study_name_with_a_path_is_refused(tmp_path, study):
    path = write(tmp_path, yaml.safe_dump({"name": "ok", "studies": {study: STUDY["mqar"]}}))
    with pytest.raises(ValueError, match=r"grid study name .* must be letters, digits"):
        load_grid(path)


def billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\nname: bomb\nstudies: {}\n"


def test_an_alias_bomb_is_refused_within_a_second(tmp_path):
    path = write(tmp_path, billion_laughs(10))  # 10^9 values once expanded
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"its YAML aliases expand to more than 100,000 values \(an alias bomb\?\)"):
        load_grid(path)
    assert time.monotonic() - started < 1.0


def test_a_recursive_alias_is_refused_not_a_recursion_error(tmp_path):
    path = write(tmp_path, "loop: &loop [1, *loop]\nname: r\nstudies: {}\n")
    with pytest.raises(ValueError, match=r"a YAML alias refers to a node that contains it \(a recursive alias\)"):
        load_grid(path)


def test_shared_aliases_within_the_bound_load_like_written_out_values():
    text = "base: &base [a, b]\nx: {one: *base, two: *base}\n"
    assert load_bounded_yaml(text, "t") == {"base": ["a", "b"], "x": {"one": ["a", "b"], "two": ["a", "b"]}}
    with pytest.raises(ValueError, match="more than 5 values"):
        load_bounded_yaml(text, "t", max_nodes=5)


def test_oversized_grid_files_and_fifos_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(2 << 20)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"larger than 1,048,576 bytes"):
        load_grid(str(big))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"does not exist \(or is not a regular file\)"):
        load_grid(str(fifo))


def test_a_second_memzoo_grid_into_a_grid_directory_in_use_is_refused(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"name": "busy", "studies": STUDY}))
    with exclusive_dir(tmp_path / "out" / "busy"):
        with pytest.raises(ValueError, match=rf"grid directory '.*busy' is in use by process {os.getpid()} .*pass another --out"):
            main([path, "--out", str(tmp_path / "out")])
    assert list((tmp_path / "out" / "busy").iterdir()) == []
