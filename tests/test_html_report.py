"""The HTML leaderboard (benchmark/html_report.py), on hand-made result files: ranked rows, run links
that open a section per run (its matrices, timings, configuration, environment, run file), and a
page that needs nothing but itself."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from benchmark import html_report, report, store
from benchmark.cli import main

VOID = {"meta", "img", "br", "hr", "link", "input"}


def _matrices(n_tasks: int, offset: float) -> tuple[list, list]:
    """Lower-triangular accuracy and task-aware matrices (rows as stored: row i has i + 1 entries);
    after the first task both agree, as they do in real runs."""
    acc = [[round(90.0 - 11.5 * (i - j) - offset, 2) for j in range(i + 1)] for i in range(n_tasks)]
    aware = [[row[0]] if i == 0 else [min(100.0, a + 7.25) for a in row] for i, row in enumerate(acc)]
    return acc, aware


def _result(method, seed, final, avg=60.0, forgetting=10.0, dataset="synth", n_tasks=3, rank=10, upper=False):
    acc, aware = _matrices(n_tasks, offset=seed + (rank != 10) * 0.5 + len(method) * 0.1)
    config = {"method": method, "dataset": dataset, "n_tasks": n_tasks, "seed": seed, "device": "cpu",
              "hparams": {"rank": rank, "lr": 0.003}}
    return {"run_id": f"{method}_{dataset}_T{n_tasks}_s{seed}_r{rank}", "method": method, "dataset": dataset,
            "n_tasks": n_tasks, "seed": seed, "config": config, "upper_bound": upper, "acc_matrix": acc,
            "task_aware_matrix": aware, "final_acc": final, "avg_acc": avg, "forgetting": forgetting,
            "task_aware_final_acc": final + 7.25, "trainable_params": [1000 * (t + 1) for t in range(n_tasks)],
            "step_acc": [row[0] for row in acc],
            "timings": {"total_s": 12.5, "tasks": [{"begin_s": 0.25, "train_s": 3.5 + t, "end_s": 0.0, "eval_s": 0.5}
                                                   for t in range(n_tasks)]},
            "environment": {"torch": "2.99.0+test", "device_name": "Test GPU"},
            "data_info": {"image_size": 32, "task_images": [{"train": 60, "test": 40}] * n_tasks}}


@pytest.fixture
def filled(results_dir):
    for r in [_result("inflora", 0, 50.0, 60.0, 8.0), _result("inflora", 1, 60.0, 70.0, 12.0),
              _result("seq-lora", 0, 40.0, 55.0, 30.0), _result("seq-lora", 1, 44.0, 57.0, 20.0),
              _result("seq-lora", 0, 45.0, 50.0, rank=4),  # another configuration: its own row
              _result("joint", 0, 80.0, 80.0, None, upper=True),
              _result("inflora", 0, 70.0, 75.0, dataset="cifar100", n_tasks=5)]:
        store.write_result(results_dir, r)
    return results_dir


def _page(results_dir, published: bool = False) -> str:
    runs = report.collect(results_dir)
    table = report.aggregate(runs)
    return html_report.to_html(runs, report.with_published(table, report.load_published()) if published else table,
                               results_dir)


class Node:
    """An element: tag, attributes, and children (elements and text)."""

    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find(self, tag: str) -> list["Node"]:
        return [n for n in self.walk() if n.tag == tag]


class _Tree(HTMLParser):
    """A small DOM: enough to find elements by id and read tables."""

    def __init__(self, page: str):
        super().__init__()
        self.root = Node("root", {})
        self.stack, self.parents = [self.root], {}
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        self.parents[id(node)] = self.stack[-1]
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag not in VOID:
            assert self.stack.pop().tag == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        self.stack[-1].children.append(data)

    def by_id(self, element_id: str) -> Node:
        (node,) = [n for n in self.root.walk() if n.attrs.get("id") == element_id]
        return node

    def ancestors(self, node: Node) -> list[Node]:
        chain = []
        while id(node) in self.parents:
            node = self.parents[id(node)]
            chain.append(node)
        return chain


def _tables(section: Node) -> dict[str, list[list[Node]]]:
    """The captioned tables of a section: caption -> rows of cells (th and td)."""
    return {t.find("caption")[0].text(): [[c for c in row.children if isinstance(c, Node)] for row in t.find("tr")]
            for t in section.find("table") if t.find("caption")}


def _section(tree: _Tree, run_id: str) -> Node:
    return tree.by_id(f"run-{run_id}")


def test_leaderboard_is_ranked_with_configuration_and_published_numbers(filled):
    page = _page(filled, published=True)
    body = page.split("<h2>synth, 3 tasks</h2>")[1].split("<h3>Runs</h3>")[0]
    order = [body.index(name) for name in ("inflora</span>", "seq-lora [", "joint (upper bound)")]
    assert order == sorted(order)  # ranked by A_T, upper bound last
    assert "title='config " in body and "&quot;rank&quot;: 10" in body  # its configuration on hover
    assert "published A_T" in body and "55.00 ± 7.07" in body
    assert page.count("data:image/png;base64,") == 2  # one inline plot per benchmark


def test_every_run_link_opens_that_runs_section_with_its_file(filled):
    tree = _Tree(_page(filled))
    ids = {n.attrs["id"] for n in tree.root.walk() if "id" in n.attrs}
    links = [a for a in tree.root.find("a") if a.attrs["href"].startswith("#")]
    assert {a.attrs["href"][1:] for a in links} <= ids  # no link to a missing anchor
    for path in sorted(store.runs_dir(filled).glob("*.json")):
        result = json.loads(path.read_text())
        (link,) = [a for a in links if a.attrs["href"] == f"#run-{result['run_id']}"]
        assert link.text() == f"s{result['seed']}"
        section = _section(tree, result["run_id"])
        assert any(n.tag == "details" for n in tree.ancestors(section))  # collapsed until opened
        (file_link,) = [a for a in section.find("a") if a.attrs["href"].startswith("file://")]
        assert Path(unquote(urlparse(file_link.attrs["href"]).path)) == path.resolve()


def _background(page: str, cell: Node) -> str:
    """The background colour the page's stylesheet gives a heatmap cell."""
    return re.search(r"\." + cell.attrs["class"] + r"\{background:(#[0-9a-f]{6})", page).group(1)


def test_run_section_shows_both_matrices_with_the_upper_triangle_blank(filled):
    page = _page(filled)
    tree = _Tree(page)
    result = json.loads(store.result_path(filled, "seq-lora_synth_T3_s1_r10").read_text())
    tables = _tables(_section(tree, result["run_id"]))
    for caption, key in (("accuracy (%)", "acc_matrix"), ("task-aware accuracy (%)", "task_aware_matrix")):
        rows = tables[caption][1:]  # under the header row
        matrix = result[key]
        assert len(rows) == 3 and all(len(row) == 1 + 3 for row in rows)  # row label + one cell per task
        for i, row in enumerate(rows):
            for j, cell in enumerate(row[1:]):
                if j <= i:
                    assert cell.text() == f"{matrix[i][j]:.1f}" and cell.attrs.get("class", "").startswith("h")
                else:  # task j not learned yet: no number, no colour
                    assert cell.text() == "" and "class" not in cell.attrs
    acc, aware = tables["accuracy (%)"][1:], tables["task-aware accuracy (%)"][1:]
    assert result["acc_matrix"][2][0] == 65.2 and acc[2][1].text() == "65.2"  # a number from the JSON
    # one colour scale: equal values share a colour in both matrices, different values do not
    assert _background(page, acc[0][1]) == _background(page, aware[0][1])
    assert _background(page, acc[2][1]) != _background(page, acc[2][3])


def test_run_section_shows_headline_numbers_timings_configuration_environment_and_data(filled):
    tree = _Tree(_page(filled))
    section = _section(tree, "inflora_synth_T3_s1_r10")
    summary = next(n for n in tree.ancestors(section) if n.tag == "details").find("summary")[0].text()
    assert "inflora" in summary and "seed 1" in summary and "A_T 60.00" in summary
    (headline,) = [t for t in section.find("table") if "trainable params" in t.text()]
    names, values = ([c.text() for c in row.children if isinstance(c, Node)] for row in headline.find("tr"))
    assert dict(zip(names, values)) == {"A_T": "60.00", "A_bar": "70.00", "forgetting": "12.00",
                                        "task-aware A_T": "67.25", "trainable params": "1,000 → 3,000"}
    tables = _tables(section)
    timings = {row[0].text(): [c.text() for c in row[1:]] for row in tables["timings (total 12.5 s)"][1:]}
    assert timings["train"] == ["3.50", "4.50", "5.50", "13.50"]  # per task and their sum
    config = {row[0].text(): row[1].text() for row in tables["configuration"]}
    assert config["hparams.rank"] == "10" and config["hparams.lr"] == "0.003" and config["seed"] == "1"
    environment = {row[0].text(): row[1].text() for row in tables["environment"]}
    assert environment == {"torch": "2.99.0+test", "device_name": "Test GPU"}
    data = {row[0].text(): row[1].text() for row in tables["data"]}
    assert data["image_size"] == "32" and '"test": 40' in data["task_images"]


def test_page_is_self_contained(filled):
    page = _page(filled, published=True)
    tree = _Tree(page)
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    assert all(n.attrs["src"].startswith("data:image/png;base64,") for n in tree.root.walk() if "src" in n.attrs)
    assert all(a.attrs["href"].startswith(("#", "file://")) for a in tree.root.find("a"))
    assert not any(name.startswith("on") for n in tree.root.walk() for name in n.attrs)  # no inline handlers


def test_page_size_stays_reasonable_for_a_full_grid(results_dir):
    """3 seeds x 10 methods x 4 benchmarks of 20 tasks: a few MB, mostly the run sections."""
    for dataset in ("synth", "cifar100", "imagenet-r", "domainnet"):
        for m in range(10):
            for seed in range(3):
                store.write_result(results_dir, _result(f"method{m}", seed, 50.0 + m, dataset=dataset, n_tasks=20))
    page = _page(results_dir)
    assert page.count("<details class='run'>") == 120
    assert len(page.encode()) < 4_000_000  # about 2.6 MB


def test_cli_writes_the_page(filled, tmp_path):
    out = tmp_path / "board.html"
    assert main(["report", "--results-dir", str(filled), "--format", "html", "--out", str(out)]) == 0
    assert "id='run-inflora_synth_T3_s0_r10'" in out.read_text()


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium not installed (Debian: chromium)")


@needs_chromium
def test_page_renders_in_headless_chromium(filled, tmp_path):
    page = tmp_path / "leaderboard.html"
    page.write_text(_page(filled, published=True))
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@needs_chromium
def test_a_run_link_opens_its_section_in_chromium(filled, tmp_path):
    """Navigating to a run's anchor opens exactly that run's <details> (Chromium reveals the target)."""
    page = tmp_path / "leaderboard.html"
    page.write_text(_page(filled))
    proc = _chromium(tmp_path, "--dump-dom", page.as_uri() + "#run-seq-lora_synth_T3_s1_r10")
    assert proc.returncode == 0, proc.stderr[-1000:]
    tree = _Tree(proc.stdout)
    opened = [d for d in tree.root.find("details") if "open" in d.attrs]
    assert len(opened) == 1 and opened[0] in tree.ancestors(_section(tree, "seq-lora_synth_T3_s1_r10"))
