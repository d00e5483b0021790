"""Series groups on a Dask cluster (lmalign_jax.batch.distributed) give what the local path gives.

The cluster is a LocalCluster on the loopback interface with one worker process of one thread
(the series match tests/test_batch.py's). Not an in-process worker thread: it ran JAX in a
thread that outlived the cluster, and a later XLA compile in the same pytest worker crashed
with a segmentation fault twice in 2026-12 dry runs (jax-ml/jax#11066 is a multithreaded
segfault of that kind; or the memory-mapping limit found later, tests/conftest.py); a worker
process costs ~12 s more here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli as run

import lmalign_jax as lm
from lmalign_jax.batch import align_batch
from lmalign_jax.batch.distributed import align_distributed, connect, map_groups

# lmalign_jax.batch.distributed imports Dask only inside its functions, so the imports above
# work without it; the whole module is skipped when it is missing.
distributed = pytest.importorskip("distributed")

# Dask warns when its scratch folder takes over 1 s to make (a loaded machine), in its own thread
pytestmark = pytest.mark.filterwarnings(
    "ignore::ResourceWarning",
    "ignore::DeprecationWarning",
    "ignore:Creating scratch directories is taking a surprisingly long time:UserWarning",
)


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("LMALIGN_NO_COMPILATION_CACHE", "1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with distributed.LocalCluster(
        local_directory=tmp_path_factory.mktemp("dask"),  # not /tmp/dask-scratch-space, shared
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as c:
        yield c


def without_times(value):
    """A JSON record without its timings (which differ between runs)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def test_cli_on_dask_writes_what_the_local_path_writes(cluster, tmp_path):
    for seed in (0, 1, 2):
        rc, _, err = run(
            [
                "simulate",
                "--out-dir",
                tmp_path / "in",
                "--prefix",
                f"s{seed}",
                "--views",
                21,
                "--markers",
                10,
                "--missing",
                0.1,
                "--seed",
                seed,
            ]
        )
        assert rc == 0, err
    (tmp_path / "in" / "broken.csv").write_text("marker,view,x,y\n1,0,5,5\n")
    (tmp_path / "in" / "broken.rawtlt").write_text("0\n")
    common = ["--image-size", 2048, 2048, "--no-figure"]
    rc_local, _, err = run(["batch", tmp_path / "in", "--out-dir", tmp_path / "local", *common])
    assert rc_local == 2, err
    rc_dask, _, err = run(
        [
            "batch",
            tmp_path / "in",
            "--out-dir",
            tmp_path / "dask",
            *common,
            "--scheduler",
            cluster.scheduler_address,
            "--group-size",
            2,
        ]
    )
    assert rc_dask == 2, err
    assert "on the Dask cluster at tcp://127.0.0.1:" in err

    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*") if p.is_file())
    dask = sorted(p.relative_to(tmp_path / "dask") for p in (tmp_path / "dask").rglob("*") if p.is_file())
    assert local == dask and Path("s2/s2.xf") in local and not any("broken" in str(p) for p in local)
    for rel in local:
        a, b = (tmp_path / d / rel for d in ("local", "dask"))
        if rel.suffix in (".xf", ".tlt", ".resid", ".xyz"):
            assert a.read_bytes() == b.read_bytes(), rel
        elif rel.name.startswith("s") and rel.suffix == ".json":
            ra, rb = (without_times(json.loads(p.read_text())) for p in (a, b))
            assert (
                ra["summary"] == rb["summary"] and ra["views"] == rb["views"] and ra["stages"] == rb["stages"]
            )
    rows = [line.split("\t") for line in (tmp_path / "dask" / "batch_summary.tsv").read_text().splitlines()]
    local_rows = [
        line.split("\t") for line in (tmp_path / "local" / "batch_summary.tsv").read_text().splitlines()
    ]
    seconds = rows[0].index("seconds")
    assert [r[:seconds] + r[seconds + 1 :] for r in rows] == [
        r[:seconds] + r[seconds + 1 :] for r in local_rows
    ]
    assert "broken" in rows[1][0] and rows[1][rows[0].index("status")] == "bad input"


def test_dask_workers_reconstruct_what_the_local_path_reconstructs(cluster, tmp_path):
    """--reconstruct on the cluster: each worker makes its group's tomograms, equal to the local run's."""
    import mrcfile
    import numpy as np

    for seed in (0, 1):  # 41 views of 256 x 256 px with their raw stacks s<seed>.mrc
        rc, _, err = run(
            ["simulate", "--out-dir", tmp_path / "in", "--prefix", f"s{seed}", "--stack", "--seed", seed]
        )
        assert rc == 0, err
    common = ["--reconstruct", 32, "--bin", 4, "--no-figure", "--quiet"]
    rc, _, err = run(["batch", tmp_path / "in", "--out-dir", tmp_path / "local", *common])
    assert rc == 0, err
    rc, _, err = run(
        [
            "batch",
            tmp_path / "in",
            "--out-dir",
            tmp_path / "dask",
            *common,
            "--scheduler",
            cluster.scheduler_address,
            "--group-size",
            1,
        ]
    )
    assert rc == 0, err
    for name in ("s0", "s1"):
        with (
            mrcfile.open(tmp_path / "local" / name / f"{name}.rec.mrc") as a,
            mrcfile.open(tmp_path / "dask" / name / f"{name}.rec.mrc") as b,
        ):
            assert a.data.shape == (8, 64, 64) and float(np.std(a.data)) > 0
            np.testing.assert_array_equal(a.data, b.data)


def test_align_distributed_equals_align_batch(cluster):
    obs = [lm.simulate(n_views=21, n_markers=10, missing_fraction=0.1, seed=s).observations for s in range(3)]
    finished = []
    remote = align_distributed(
        obs + [None],
        scheduler=cluster,
        group_size=2,
        rotation_deg=[None, None, -2.0, None],
        on_result=lambda i, value: finished.append(i),
    )
    local = align_batch(obs, rotation_deg=[None, None, -2.0])
    assert sorted(finished) == [0, 1]
    for r, q in zip(remote[:3], local, strict=True):
        assert r.status == q.status == "converged"
        np.testing.assert_allclose(r.views, q.views, rtol=0, atol=1e-10)
        np.testing.assert_allclose(r.markers, q.markers, rtol=0, atol=1e-10)
    assert isinstance(remote[3], TypeError)


def _fails_on_two(group):
    if 2 in group:
        raise RuntimeError("group with a 2")
    return [x * 10 for x in group]


def test_a_failed_task_fails_its_group_only(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        results = map_groups(_fails_on_two, [[0, 1], [2, 3], [4]], scheduler=client)
    assert results[0] == [0, 10] and results[2] == [40]
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "group with a 2"


def test_unreachable_scheduler_is_an_os_error():
    with (
        pytest.raises(OSError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        connect("tcp://127.0.0.1:9", timeout=1),
    ):
        pass
