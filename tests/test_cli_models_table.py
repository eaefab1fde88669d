"""``ghostnet models`` lists params, MACs, published top-1 (with source) and weights."""

import json

from ghostnet.cli import main


def test_models_table_json(capsys):
    assert main(["models", "ghostnet_*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    g = rows["ghostnet_100"]
    assert g["params"] == 5182508 and round(g["macs"] / 1e6, 1) == 141.2
    assert g["top1"] == 73.9 and "Han" in g["top1_source"] and g["weights"] is True
    assert rows["ghostnet_050"]["weights"] is False


def test_models_table_text_no_counts(capsys):
    assert main(["models", "resnet20*", "--no-counts"]) == 0
    out = capsys.readouterr().out
    assert "params" in out.splitlines()[0] and "resnet20_cifar" in out
