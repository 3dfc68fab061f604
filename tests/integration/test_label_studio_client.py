"""ls_client and media against a real Label Studio 1.23.2: auth flavours, predictions, export, media fetching."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from glus_backend.ls_client import LabelStudioClient, LabelStudioError
from glus_backend.media import MediaError, resolve_media

from .label_studio import LabelStudioServer, free_port

pytestmark = pytest.mark.integration

VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"
VIDEO_CONFIG = """<View>
  <Header value="$prompt"/>
  <Labels name="videoLabels" toName="video"><Label value="Object"/></Labels>
  <Video name="video" value="$video"/>
  <VideoRectangle name="box" toName="video"/>
</View>"""


@pytest.fixture(scope="module")
def project(label_studio: LabelStudioServer) -> int:
    return label_studio.create_project("client tests", VIDEO_CONFIG)


@pytest.fixture(scope="module")
def uploaded(label_studio: LabelStudioServer, project: int) -> tuple[int, str]:
    """(task id, media URL) of bedroom.mp4 uploaded through the import API."""
    task_id = label_studio.upload_file(project, VIDEOS / "bedroom.mp4")
    url = label_studio.api.get_task(task_id)["data"]["video"]
    assert url.startswith(f"/data/upload/{project}/")
    return task_id, url


def test_pat_auth_refreshes_access_tokens(label_studio: LabelStudioServer, project: int) -> None:
    client = label_studio.client()
    assert client.is_pat
    assert client.get_project(project)["id"] == project
    assert client.token_refreshes == 1
    first = client._access_token
    client.get_project(project)
    assert client.token_refreshes == 1  # still valid: reused

    client._access_expires_at = time.time() + 5  # inside the refresh margin: renewed before use
    assert client.get_project(project)["id"] == project
    assert client.token_refreshes == 2 and client._access_token != first

    client._access_token = "not-a-valid-access-token"  # server says 401 -> one refresh and resend
    client._access_expires_at = time.time() + 3600
    assert client.get_project(project)["id"] == project
    assert client.token_refreshes == 3


def test_legacy_token_only_when_the_org_enables_it(label_studio: LabelStudioServer, project: int) -> None:
    legacy = LabelStudioClient(label_studio.url, label_studio.get_legacy_token(), retries=0)
    assert not legacy.is_pat
    with pytest.raises(LabelStudioError) as err:
        legacy.get_project(project)
    assert err.value.status == 401 and not err.value.transient
    label_studio.set_legacy_tokens(True)
    try:
        assert legacy.get_project(project)["id"] == project
        assert legacy.auth_headers()["Authorization"].startswith("Token ")
    finally:
        label_studio.set_legacy_tokens(False)
    with pytest.raises(LabelStudioError):
        legacy.get_project(project)


def test_prediction_round_trip_and_export(label_studio: LabelStudioServer, project: int) -> None:
    client = label_studio.client()
    (task_id,) = label_studio.import_tasks(project, [{"data": {"video": "/data/upload/0/x.mp4", "prompt": "a cat"}}])
    (other_id,) = label_studio.import_tasks(project, [{"data": {"video": "/data/upload/0/y.mp4", "prompt": "a dog"}}])
    result = [
        {
            "id": "obj1",
            "from_name": "box",
            "to_name": "video",
            "type": "videorectangle",
            "value": {
                "framesCount": 10,
                "duration": 1.0,
                "labels": ["Object"],
                "sequence": [{"frame": 1, "enabled": True, "x": 1, "y": 2, "width": 3, "height": 4}],
            },
        }
    ]
    pred = client.create_prediction(task_id, result, 0.75, "glus-test-1")
    assert pred["task"] == task_id and pred["model_version"] == "glus-test-1"
    listed = client.list_predictions(task_id)
    assert [p["id"] for p in listed] == [pred["id"]] and listed[0]["result"] == result
    assert client.list_predictions(other_id) == []  # the filter really is per task

    ann = label_studio.create_annotation(task_id, result, parent_prediction=pred["id"])
    exported = {t["id"]: t for t in client.export_tasks(project)}
    assert task_id in exported and other_id not in exported  # default export: annotated tasks only
    assert [a["id"] for a in exported[task_id]["annotations"]] == [ann]
    assert exported[task_id]["data"]["prompt"] == "a cat"
    assert other_id in {t["id"] for t in client.export_tasks(project, all_tasks=True)}
    label_studio.delete_annotation(ann)

    client.delete_prediction(pred["id"])
    assert client.list_predictions(task_id) == []
    client.delete_prediction(pred["id"])  # already gone: fine


def test_download_uploaded_file(label_studio: LabelStudioServer, uploaded: tuple[int, str], tmp_path: Path) -> None:
    task_id, url = uploaded
    client = label_studio.client()
    original = (VIDEOS / "bedroom.mp4").read_bytes()
    path = resolve_media(url, client, tmp_path / "cache", task_id=task_id)
    assert path.read_bytes() == original and path.suffix == ".mp4"

    calls = []
    real = client.request
    client.request = lambda *a, **k: calls.append(a) or real(*a, **k)  # type: ignore[method-assign]
    assert resolve_media(url, client, tmp_path / "cache", task_id=task_id) == path
    assert calls == []  # cache hit: no second download

    dest = client.download(url, tmp_path / "direct.mp4")
    assert dest.read_bytes() == original
    absolute = resolve_media(label_studio.url + url, client, tmp_path / "cache")
    assert absolute.read_bytes() == original


def test_local_files_from_disk_and_over_http(label_studio: LabelStudioServer, project: int, tmp_path: Path) -> None:
    on_disk = label_studio.copy_into_files(VIDEOS / "dog.mp4", "videos/dog.mp4")
    label_studio.add_local_storage(project, on_disk.parent)
    url = "/data/local-files/?d=videos/dog.mp4"
    client = label_studio.client()

    direct = resolve_media(url, client, tmp_path, local_files_root=label_studio.files_root)
    assert direct == on_disk.resolve() and list(tmp_path.iterdir()) == []  # read in place, nothing copied

    fetched = resolve_media(url, client, tmp_path)
    assert fetched.parent == tmp_path and fetched.read_bytes() == on_disk.read_bytes()

    with pytest.raises(MediaError, match="outside the local files root"):
        resolve_media(
            "/data/local-files/?d=../data/label_studio.sqlite3",
            client,
            tmp_path,
            local_files_root=label_studio.files_root,
        )
    with pytest.raises(MediaError) as err:  # over HTTP a missing local file is a plain 404
        resolve_media("/data/local-files/?d=videos/missing.mp4", client, tmp_path)
    assert err.value.status == 404 and not err.value.transient


def test_max_bytes_refusal(label_studio: LabelStudioServer, uploaded: tuple[int, str], tmp_path: Path) -> None:
    _, url = uploaded
    with pytest.raises(MediaError, match="larger than the limit") as err:
        resolve_media(url, label_studio.client(), tmp_path, max_bytes=100_000)
    assert not err.value.transient
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_missing_things_are_not_transient(label_studio: LabelStudioServer, project: int, tmp_path: Path) -> None:
    client = label_studio.client()
    with pytest.raises(LabelStudioError) as err:
        client.get_task(10**8)
    assert err.value.status == 404 and not err.value.transient and "/api/tasks/100000000" in str(err.value)
    with pytest.raises(MediaError) as merr:  # LS 1.23.2 answers 500 for a missing upload; still permanent
        resolve_media(f"/data/upload/{project}/nope.mp4", client, tmp_path)
    assert not merr.value.transient


def test_unreachable_label_studio_is_transient(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key in (label_studio.pat, "0123456789abcdef0123456789abcdef01234567"):
        client = LabelStudioClient(url, key, timeout=2, retries=2, backoff=0.01)
        sleeps: list[float] = []
        client._sleep = sleeps.append
        with pytest.raises(LabelStudioError) as err:
            client.get_project(1)
        assert err.value.transient and err.value.status is None
        assert sleeps == [0.01, 0.02]
        with pytest.raises(MediaError) as merr:
            resolve_media("/data/upload/1/x.mp4", client, tmp_path)
        assert merr.value.transient


def test_presign_of_a_cloud_uri_without_storage(label_studio: LabelStudioServer, project: int, tmp_path: Path) -> None:
    (task_id,) = label_studio.import_tasks(project, [{"data": {"video": "s3://bucket/key.mp4", "prompt": "x"}}])
    client = label_studio.client()
    with pytest.raises(MediaError, match="s3://bucket/key.mp4") as err:
        resolve_media("s3://bucket/key.mp4", client, tmp_path, task_id=task_id)
    assert err.value.status == 404 and not err.value.transient and "presign" in str(err.value)
    with pytest.raises(MediaError, match="no task id"):
        resolve_media("s3://bucket/key.mp4", client, tmp_path)
