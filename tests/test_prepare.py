"""``prepare`` against a real HTTP server on the loopback interface (``tests/loopback_server.py``),
serving archives built from the real-format fixtures of ``tests/dataset_fixtures.py`` under the
official file names. The data sets' tables keep their URLs and targets; only the checksums and
sizes (the fixtures' own, standing in for the published ones) and the known counts are patched."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from benchmark import cli, store
from benchmark.registry import DATASETS
from datasets import domainnet, download, imagenet_a, imagenet_r
from tests.dataset_fixtures import write_cifar100, write_domainnet, write_imagenet_a, write_imagenet_r
from tests.loopback_server import Files, serving

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--backbone", "tiny", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--no-progress", "--tasks", "5"]


def tar_of(folder: Path, gzip: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


@dataclasses.dataclass
class Served:
    files: Files
    url: str
    bodies: dict[str, bytes]


def official_files(source: Path) -> dict[str, dict[str, bytes]]:
    """Per data set, its official files (by official name) built from the fixtures."""
    built: dict[str, dict[str, bytes]] = {}
    write_cifar100(source / "cifar")
    built["cifar100"] = {"cifar-100-python.tar.gz": tar_of(source / "cifar" / "cifar-100-python", gzip=True)}
    written = write_imagenet_r(source / "inr", per_class=3, with_split_yaml=True)
    built["imagenet-r"] = {"imagenet-r.tar": tar_of(source / "inr" / "imagenet-r"),
                           **{f.name: f.read_bytes() for f in written.split_dir.iterdir()}}
    write_imagenet_a(source / "ina", per_class=2)
    built["imagenet-a"] = {"imagenet-a.tar": tar_of(source / "ina" / "imagenet-a")}
    domains = DATASETS.get("domainnet").Options().domains
    write_domainnet(source / "dn", domains, train_per_class=1, test_per_class=1)
    built["domainnet"] = {f"{d}.zip": zip_of(source / "dn" / "domainnet" / d) for d in domains}
    built["domainnet"].update({f.name: f.read_bytes() for f in (source / "dn" / "domainnet").glob("*.txt")})
    return built


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    return official_files(tmp_path_factory.mktemp("official"))


@pytest.fixture
def served(built, monkeypatch):
    """The loopback server holding every official file; each data set's table carries the fixtures'
    checksums and sizes, and its known counts are the fixtures'."""
    bodies = {name: body for files in built.values() for name, body in files.items()}
    for name in built:
        cls = DATASETS.get(name)
        monkeypatch.setattr(cls, "downloads", tuple(
            dataclasses.replace(item, checksum=f"sha256:{hashlib.sha256(bodies[item.name]).hexdigest()}",
                                size=len(bodies[item.name])) for item in cls.downloads))
    monkeypatch.setattr(DATASETS.get("cifar100"), "published_sizes", (200, 100))
    monkeypatch.setattr(imagenet_r, "TOTAL_IMAGES", 600)  # 3 per class
    monkeypatch.setattr(DATASETS.get("imagenet-r"), "published_sizes", (399, 200))  # the fixture's YAMLs leave one out
    monkeypatch.setattr(imagenet_a, "TOTAL_IMAGES", 400)
    for domain in domainnet.DOMAINS:
        monkeypatch.setitem(domainnet.LIST_SIZES, domain, (345, 345))
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    files = Files(bodies=dict(bodies))
    with serving(files) as url:
        yield Served(files, url, bodies)


def prepare(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["prepare", *args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, name: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith(f"| {name} ")]
    return line


def gets(files: Files) -> list[str]:
    return [path for method, path, _ in files.log if method == "GET"]


def test_prepare_then_a_run_reads_the_root_and_a_rerun_does_nothing(served, tmp_path, capsys):
    root = tmp_path / "data"
    code, out, err = prepare(["imagenet-r", "cifar100", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert "| ready " in row(out, "imagenet-r") and "200 classes, 400 training / 200 test images" in out
    assert "CODA's split verified too" in row(out, "imagenet-r")
    assert "100 classes, 200 training / 100 test images" in row(out, "cifar100")
    assert sorted(gets(served.files)) == sorted(f"/{name}" for name in
                                                ["imagenet-r.tar", "imagenet-r_train.yaml", "imagenet-r_test.yaml",
                                                 "cifar-100-python.tar.gz"])
    assert not list((root / download.STATE / "downloads").iterdir())  # archives removed once in place
    assert not (root / download.STATE / "unpack").exists() or not list((root / download.STATE / "unpack").iterdir())
    for dataset, extra in (("imagenet-r", ["--split-file", str(root / "splits")]), ("cifar100", [])):
        code = cli.main(["--methods", "seq-lora", "--dataset", dataset, "--data-root", str(root), "--results-dir",
                         str(tmp_path / "results"), *TINY_RUN, *extra])
        assert code == 0, capsys.readouterr().err
    results = {r["config"]["dataset"]: r for r in store.load_results(tmp_path / "results")}
    assert results["imagenet-r"]["data_info"]["split"] == "coda-yaml" and len(results["cifar100"]["acc_matrix"]) == 5
    capsys.readouterr()
    served.files.log.clear()
    code, out, _ = prepare(["imagenet-r", "cifar100", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0 and served.files.log == []
    assert "already in place, nothing fetched" in row(out, "imagenet-r")


def test_all_four_data_sets_from_the_mirror(served, tmp_path, capsys):
    root = tmp_path / "data"
    code, out, err = prepare(["all", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert "345 classes, 2,070 training / 2,070 test images" in row(out, "domainnet")  # 6 domains, 1 + 1 per class
    assert "200 classes, 200 training / 200 test images" in row(out, "imagenet-a")
    assert sorted(p.name for p in (root / "domainnet").iterdir()) == sorted(
        [*download_targets("domainnet")])


def download_targets(dataset: str) -> list[str]:
    return [Path(item.target).name for item in DATASETS.get(dataset).downloads]


def test_a_dropped_connection_resumes_with_a_range_request(served, tmp_path, capsys):
    size = len(served.bodies["imagenet-r.tar"])
    served.files.drop_after["imagenet-r.tar"] = size // 3
    code, out, err = prepare(["imagenet-r", "--data-root", str(tmp_path / "data"), "--mirror", served.url], capsys)
    assert code == 0, out + err
    ranges = [r for method, path, r in served.files.log if path == "/imagenet-r.tar" and method == "GET"]
    assert ranges == [None, f"bytes={size // 3}-"]


def test_a_failed_download_keeps_its_part_and_the_rerun_resumes(served, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 1)
    size = len(served.bodies["imagenet-r.tar"])
    served.files.drop_after["imagenet-r.tar"] = size // 2
    root = tmp_path / "data"
    code, out, err = prepare(["imagenet-r", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 1 and "| failed " in row(out, "imagenet-r")
    assert f"could not download {served.url}/imagenet-r.tar (1 attempt; " in out and "--from DIR" in out
    assert not (root / "imagenet-r").exists()
    code, out, _ = prepare(["imagenet-r", "--check", "--data-root", str(root)], capsys)
    assert code == 1 and "imagenet-r (partial download, " in row(out, "imagenet-r")
    code, out, err = prepare(["imagenet-r", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert [r for _, path, r in served.files.log if path == "/imagenet-r.tar"][-1] == f"bytes={size // 2}-"


def test_a_checksum_mismatch_moves_the_file_aside_and_never_uses_it(served, tmp_path, capsys):
    served.files.corrupt.add("cifar-100-python.tar.gz")
    root = tmp_path / "data"
    code, out, _ = prepare(["cifar100", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 1 and "| failed " in row(out, "cifar100")
    assert "has sha256" in out and "(published); moved aside" in out
    assert not (root / "cifar-100-python").exists()
    [bad] = (root / download.STATE / "downloads").glob("cifar-100-python.tar.gz.bad-*")
    code, out, _ = prepare(["cifar100", "--check", "--data-root", str(root)], capsys)  # --check lists it
    assert code == 1 and f"1 download(s) moved aside after a failed checksum, never used: {bad.name}" in out
    served.files.corrupt.clear()
    code, out, err = prepare(["cifar100", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert not bad.exists()  # a good copy in place: the moved-aside one is deleted


def test_a_second_prepare_on_the_same_root_is_one_line_and_waits_for_nothing(served, tmp_path, capsys):
    root = tmp_path / "data"
    with download.root_lock(root):  # another prepare holds the root (flock: per open file, also in one process)
        code, out, err = prepare(["cifar100", "--data-root", str(root), "--mirror", served.url], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"error: another prepare is using {root} (pid {os.getpid()} on ")
        assert gets(served.files) == []  # nothing fetched beside the holder
        code, out, _ = prepare(["cifar100", "--check", "--data-root", str(root)], capsys)  # reading needs no lock
        assert code == 1 and "| missing " in row(out, "cifar100")
    assert (root / download.STATE / "lock").read_text() == ""  # released: the holder's line is gone
    assert prepare(["cifar100", "--data-root", str(root), "--mirror", served.url], capsys)[0] == 0


def test_a_missing_file_is_one_line_naming_the_url_and_the_from_route(served, tmp_path, capsys):
    del served.files.bodies["imagenet-a.tar"]
    code, out, _ = prepare(["imagenet-a", "--data-root", str(tmp_path / "data"), "--mirror", served.url], capsys)
    assert code == 1
    assert f"{served.url}/imagenet-a.tar answered HTTP 404" in row(out, "imagenet-a") and "--from DIR" in out
    assert len(gets(served.files)) == 1  # a 404 is not retried


def test_an_unreachable_host_is_one_line(served, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 2)
    code, out, _ = prepare(["cifar100", "--data-root", str(tmp_path / "data"), "--mirror", "http://127.0.0.1:9"],
                           capsys)
    assert code == 1 and "could not download http://127.0.0.1:9/cifar-100-python.tar.gz (2 attempts; " in out


def test_check_on_a_complete_a_partial_and_a_corrupted_root(served, tmp_path, capsys):
    root = tmp_path / "data"
    assert prepare(["cifar100", "imagenet-r", "--data-root", str(root), "--mirror", served.url], capsys)[0] == 0
    served.files.log.clear()
    code, out, _ = prepare(["cifar100", "imagenet-r", "--check", "--data-root", str(root)], capsys)
    assert code == 0 and "| ready " in row(out, "cifar100") and "| ready " in row(out, "imagenet-r")
    code, out, _ = prepare(["imagenet-a", "--check", "--data-root", str(root)], capsys)
    assert code == 1 and "| missing " in row(out, "imagenet-a") and "imagenet-a; run prepare imagenet-a" in out
    (root / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    next((root / "imagenet-r").glob("*/*.jpg")).unlink()
    code, out, _ = prepare(["cifar100", "imagenet-r", "--check", "--data-root", str(root)], capsys)
    assert code == 1
    assert "| wrong " in row(out, "cifar100") and "is not a CIFAR-100 pickle" in row(out, "cifar100")
    assert "| wrong " in row(out, "imagenet-r") and "expected 600 images in all" in row(out, "imagenet-r")
    assert served.files.log == []  # --check never touches the network


def test_from_a_folder_of_hand_downloaded_archives(served, built, tmp_path, capsys):
    source = tmp_path / "downloads"
    source.mkdir()
    for name, body in built["imagenet-a"].items():
        (source / name).write_bytes(body)
    code, out, err = prepare(["imagenet-a", "--data-root", str(tmp_path / "data"), "--from", str(source)], capsys)
    assert code == 0, out + err
    assert served.files.log == [] and (source / "imagenet-a.tar").is_file()  # the user's file stays
    code, out, _ = prepare(["imagenet-r", "--data-root", str(tmp_path / "data"), "--from", str(source)], capsys)
    assert code == 1 and f"imagenet-r.tar is not in {source} (--from)" in out


def test_an_interrupted_unpacking_is_completed_by_the_next_run(served, tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    extract = tarfile.TarFile.extractall

    def interrupted(self, path, members=None, **kwargs):
        extract(self, path, members=list(members)[:50], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["prepare", "imagenet-a", "--data-root", str(root), "--mirror", served.url, "--no-progress"])
    assert not (root / "imagenet-a").exists() and any((root / download.STATE / "unpack").iterdir())
    monkeypatch.setattr(tarfile.TarFile, "extractall", extract)
    served.files.log.clear()
    code, out, err = prepare(["imagenet-a", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert gets(served.files) == []  # the verified archive was kept for the rerun


def test_a_first_download_without_a_published_checksum_is_recorded_and_checked_later(served, tmp_path, capsys,
                                                                                      monkeypatch):
    cls = DATASETS.get("imagenet-a")
    monkeypatch.setattr(cls, "downloads", tuple(dataclasses.replace(item, checksum=None) for item in cls.downloads))
    root = tmp_path / "data"
    assert prepare(["imagenet-a", "--data-root", str(root), "--mirror", served.url], capsys)[0] == 0
    manifest = download.Manifest(root).entries["imagenet-a.tar"]
    assert manifest["sha256"] == hashlib.sha256(served.bodies["imagenet-a.tar"]).hexdigest()
    (root / "imagenet-a").rename(tmp_path / "moved")
    served.files.corrupt.add("imagenet-a.tar")
    code, out, _ = prepare(["imagenet-a", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 1 and f"(recorded in {root / download.STATE / 'manifest.json'} at its first download)" in out
    assert "moved aside" in out


@pytest.mark.parametrize("argv, message", [
    (["imagenet-x"], "cannot prepare imagenet-x; choose from cifar100, domainnet, imagenet-a, imagenet-r or all"),
    (["synth"], "synth is generated, nothing to prepare"),
    ([], "prepare needs data sets (or all) and/or --weights"),
    (["cifar100", "--check", "--mirror", "http://x"], "--check only verifies what is in the data root"),
    (["cifar100", "--methods", "inflora"], "--methods chooses whose weights --weights caches; add --weights"),
    (["cifar100", "--from", "/no/such/folder"], "--from /no/such/folder is not a folder"),
    (["cifar100", "--mirror", "mirror.example.org/data"], "--mirror mirror.example.org/data is not an http(s) URL"),
    (["all", "imagenet-x"], "cannot prepare imagenet-x"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    code = cli.main(["prepare", *argv, "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_data_root_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main(["prepare", "cifar100", "--data-root", str(tmp_path / "file")]) == 2
    assert f"--data-root {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_weights_are_cached_from_the_hub_and_found_offline(tmp_path):
    """``--weights`` through the Hugging Face hub API against a loopback hub serving a randomly
    initialised ViT-B/16 (fp16, to halve it) under InfLoRA's pinned tag; a run's loader then finds it."""
    import safetensors.torch
    import timm

    name = "vit_base_patch16_224.augreg_in21k"
    state = {k: v.half().contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    files = Files(hub={f"timm/{name}/model.safetensors": safetensors.torch.save(state)})
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable, "run_benchmark.py", "prepare", "--weights", "--no-progress"]
    with serving(files) as url:
        env["HF_ENDPOINT"] = url
        done = subprocess.run([*command, "--methods", "inflora", "seq-lora"], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"| {name} " in done.stdout and "downloaded into the Hugging Face cache" in done.stdout
        assert "methods: inflora, seq-lora" in done.stdout
        missing = subprocess.run([*command, "--methods", "l2p"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "| failed " in missing.stdout and "augreg_in21k_ft_in1k" in missing.stdout
    env["HF_HUB_OFFLINE"] = "1"  # a compute node without internet
    checked = subprocess.run([*command, "--check", "--methods", "inflora", "l2p"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 1, checked.stderr
    assert f"| {name} " in checked.stdout and "| cached " in checked.stdout and "| missing " in checked.stdout
    loaded = subprocess.run([sys.executable, "-c", f"from benchmark.backbones import build_backbone; "
                                                   f"print(build_backbone({name!r}).cls_token.dtype)"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert loaded.returncode == 0 and "torch.float32" in loaded.stdout, loaded.stderr


def test_a_full_disk_is_one_line_and_the_rerun_completes(served, built, tmp_path, tmpfs, capsys, monkeypatch):
    """On a real 8 MiB tmpfs: an archive larger than the disk is refused before its download; one
    that fits but whose unpacking fills the disk stops with one line, and after space is freed the
    same command completes from the verified archive it kept."""
    noise = tmp_path / "noise" / "imagenet-a"
    (tmp_path / "noise").mkdir()
    with tarfile.open(fileobj=io.BytesIO(built["imagenet-a"]["imagenet-a.tar"])) as tar:
        tar.extractall(tmp_path / "noise", filter="data")
    (noise / "README.txt").write_bytes(os.urandom(5 << 20))  # incompressible; the loader ignores it
    body = tar_of(noise)
    served.files.bodies["imagenet-a.tar"] = body
    cls = DATASETS.get("imagenet-a")
    monkeypatch.setattr(cls, "downloads", (dataclasses.replace(
        cls.downloads[0], checksum=f"sha256:{hashlib.sha256(body).hexdigest()}", size=len(body)),))
    served.files.bodies["imagenet-r.tar"] = os.urandom(9 << 20)
    code, out, err = prepare(["imagenet-r", "--data-root", str(tmpfs), "--mirror", served.url], capsys)
    assert code == 1 and "imagenet-r.tar needs 9.0 MiB more in" in row(out, "imagenet-r"), out + err
    code, out, _ = prepare(["imagenet-a", "--data-root", str(tmpfs), "--mirror", served.url], capsys)
    assert code == 1 and f"no space left in {tmpfs}; free space there" in row(out, "imagenet-a")
    assert not (tmpfs / "imagenet-a").exists()
    subprocess.run(["mount", "-o", "remount,size=32m", str(tmpfs)], check=True)
    served.files.log.clear()
    code, out, err = prepare(["imagenet-a", "--data-root", str(tmpfs), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert gets(served.files) == []


def test_a_server_that_ignores_range_gets_the_file_from_the_start(served, tmp_path, capsys):
    size = len(served.bodies["imagenet-a.tar"])
    served.files.drop_after["imagenet-a.tar"] = size // 2
    served.files.ignore_range.add("imagenet-a.tar")
    code, out, err = prepare(["imagenet-a", "--data-root", str(tmp_path / "data"), "--mirror", served.url], capsys)
    assert code == 0, out + err  # the 200 answer to the Range request was written from byte 0, not appended


def test_a_complete_part_left_before_its_rename_is_used_without_a_download(served, tmp_path, capsys):
    root = tmp_path / "data"
    downloads = download.downloads_dir(root)
    downloads.mkdir(parents=True)
    (downloads / "imagenet-a.tar.part").write_bytes(served.bodies["imagenet-a.tar"])
    code, out, err = prepare(["imagenet-a", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    size = len(served.bodies["imagenet-a.tar"])
    assert [r for _, _, r in served.files.log] == [f"bytes={size}-"]  # answered 416 with the length: complete


def test_a_failed_domain_is_fetched_alone_by_the_rerun(served, tmp_path, capsys):
    del served.files.bodies["real.zip"]
    root = tmp_path / "data"
    code, out, _ = prepare(["domainnet", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 1 and "real.zip answered HTTP 404" in row(out, "domainnet")
    code, out, _ = prepare(["domainnet", "--check", "--data-root", str(root)], capsys)
    assert code == 1 and "| missing " in row(out, "domainnet") and "domainnet/real" in row(out, "domainnet")
    served.files.bodies["real.zip"] = served.bodies["real.zip"]
    served.files.log.clear()
    code, out, err = prepare(["domainnet", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 0, out + err
    assert gets(served.files) == ["/real.zip"]  # the other files went on after real.zip failed


def test_a_damaged_from_file_is_refused_and_left_where_it_is(served, built, tmp_path, capsys):
    source = tmp_path / "downloads"
    source.mkdir()
    (source / "imagenet-a.tar").write_bytes(built["imagenet-a"]["imagenet-a.tar"][:-1000])
    code, out, _ = prepare(["imagenet-a", "--data-root", str(tmp_path / "data"), "--from", str(source)], capsys)
    assert code == 1 and f"{source / 'imagenet-a.tar'} has sha256" in out and "download it again from" in out
    assert (source / "imagenet-a.tar").is_file() and not (tmp_path / "data" / "imagenet-a").exists()


def test_a_broken_manifest_is_one_line(served, tmp_path, capsys, monkeypatch):
    cls = DATASETS.get("imagenet-a")
    monkeypatch.setattr(cls, "downloads", tuple(dataclasses.replace(item, checksum=None) for item in cls.downloads))
    root = tmp_path / "data"
    (root / download.STATE).mkdir(parents=True)
    (root / download.STATE / "manifest.json").write_text('["not", "a", "manifest"]')
    code, out, _ = prepare(["imagenet-a", "--data-root", str(root), "--mirror", served.url], capsys)
    assert code == 1 and "manifest.json is not a prepare manifest; delete it" in row(out, "imagenet-a")


def test_an_unwritable_data_root_is_one_line(served, tmpfs, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, out, err = prepare(["cifar100", "--data-root", str(tmpfs / "data"), "--mirror", served.url], capsys)
    assert code == 2 and err.count("\n") == 1 and "Read-only file system); choose a --data-root you can write to" in err
