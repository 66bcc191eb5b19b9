"""The raw-file archive for agents: announce, resumable chunks, deduplication, and viewers' downloads."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from collection.models import RawFile, RawUpload
from collection.services import raw_files
from instruments.choices import SourceKind
from instruments.models import DataSource
from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db

CONTENT = b"".join(b"2026-12-01T00:%02d:00Z,%d.5,%d\n" % (i % 60, i, i % 7) for i in range(200))  # 5.6 kB
SHA = hashlib.sha256(CONTENT).hexdigest()
FILE_CONFIG = {"path": "/srv/data", "columns": ["time", "t"], "archive": True}


@pytest.fixture(autouse=True)
def small_chunks(settings, tmp_path, monkeypatch):
    settings.DAQBROKER_ARCHIVE_DIR = tmp_path / "archive"
    monkeypatch.setattr(raw_files, "CHUNK_BYTES", 2000)  # three chunks for CONTENT


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def station():
    owner = make_user("olga")
    instrument = make_instrument(owner, slug="roof-station")
    agent, token = services.create_agent(owner=owner, name="roof-pc", instruments=[instrument])
    source = DataSource.objects.create(
        instrument=instrument,
        name="logger",
        kind=SourceKind.AGENT,
        agent=agent,
        config={"collect": {"kind": "file", "path": "/data", "archive": True, "columns": ["time", "t"]}},
    )
    return owner, instrument, source, bearer(token)


def announce(client, source, content=CONTENT, path="/data/day1.csv"):
    body = {
        "source": source.pk,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "modified": "2026-12-01T23:59:59Z",
    }
    return client.post("/api/v1/agent/raw-files/", body, format="json")


def chunk(client, data: bytes, offset: int, sha=SHA):
    return client.generic(
        "PUT", f"/api/v1/agent/raw-files/{sha}/?offset={offset}", data, content_type="application/octet-stream"
    )


def test_an_interrupted_upload_resumes_from_what_the_server_has_and_is_downloaded_byte_identical(station):
    owner, instrument, source, agent = station
    first = announce(agent, source)
    assert first.status_code == 200 and first.json()["status"] == "partial" and first.json()["offset"] == 0
    assert chunk(agent, CONTENT[:2000], 0).json() == {
        "status": "partial", "offset": 2000, "size": len(CONTENT), "chunk_bytes": 2000
    }  # fmt: skip
    # The agent stops here; started again, it announces the same file and is told where to go on.
    again = announce(agent, source)
    assert again.json()["offset"] == 2000
    wrong = chunk(agent, CONTENT[:2000], 0)  # a chunk sent twice (its answer lost) is refused with the offset
    assert wrong.status_code == 409 and wrong.json()["offset"] == 2000
    assert chunk(agent, CONTENT[2000:4000], 2000).json()["status"] == "partial"
    done = chunk(agent, CONTENT[4000:], 4000)
    assert done.status_code == 200 and done.json()["status"] == "stored"
    assert not RawUpload.objects.exists()

    [raw] = RawFile.objects.all()
    assert (raw.instrument, raw.source, raw.name, raw.size, raw.sha256) == (
        instrument, source, "day1.csv", len(CONTENT), SHA
    )  # fmt: skip
    viewer = APIClient()
    viewer.force_login(owner)
    listed = viewer.get(f"/api/v1/instruments/{instrument.slug}/raw-files/").json()
    assert [f["name"] for f in listed["results"]] == ["day1.csv"]
    download = viewer.get(listed["results"][0]["download"])
    assert download.status_code == 200 and b"".join(download.streaming_content) == CONTENT


def test_a_duplicate_is_not_stored_twice(station):
    _, instrument, source, agent = station
    announce(agent, source)
    for offset in range(0, len(CONTENT), 2000):
        chunk(agent, CONTENT[offset : offset + 2000], offset)
    # The same file again, and the same content under another name: no bytes sent, one copy kept.
    same = announce(agent, source)
    assert same.json()["status"] == "stored"
    renamed = announce(agent, source, path="/data/copy.csv")
    assert renamed.json()["status"] == "stored"
    assert RawFile.objects.filter(instrument=instrument).count() == 2
    blobs = [p for p in (raw_files.archive_root() / "sha256").rglob("*") if p.is_file()]
    assert [p.name for p in blobs] == [SHA]


def test_bytes_that_do_not_match_the_sha256_are_discarded(station):
    _, _, source, agent = station
    forged = CONTENT[:-1] + b"X"
    announce(agent, source)
    for offset in range(0, 4000, 2000):
        chunk(agent, forged[offset : offset + 2000], offset)
    answer = chunk(agent, forged[4000:], 4000)
    assert answer.status_code == 422
    assert not RawFile.objects.exists() and not RawUpload.objects.exists()


def test_bad_announcements_and_chunks_are_refused_with_a_reason(station, settings):
    _, _, source, agent = station
    settings.DAQBROKER_RAW_FILE_MAX_BYTES = 100
    assert announce(agent, source).status_code == 413
    settings.DAQBROKER_RAW_FILE_MAX_BYTES = 10**9
    assert announce(agent, source, path="/data/../x/").status_code == 400  # a name with folders
    assert chunk(agent, b"x" * 2001, 0).status_code == 413
    assert chunk(agent, b"abc", 0).status_code == 404  # nothing announced
    assert agent.generic("PUT", f"/api/v1/agent/raw-files/{SHA}/", b"x").status_code == 400


def test_strangers_and_other_agents_see_nothing(station):
    owner, instrument, source, agent = station
    announce(agent, source)
    for offset in range(0, len(CONTENT), 2000):
        chunk(agent, CONTENT[offset : offset + 2000], offset)
    raw = RawFile.objects.get()
    stranger = APIClient()
    stranger.force_login(make_user("stranger"))
    assert stranger.get(f"/api/v1/instruments/{instrument.slug}/raw-files/").status_code == 404
    assert stranger.get(f"/api/v1/raw-files/{raw.pk}/").status_code == 404
    assert stranger.get(f"/api/v1/instruments/{instrument.slug}/raw-files/zip/?id={raw.pk}").status_code == 404
    # Another agent may not ship into this agent's source.
    _, token = services.create_agent(owner=owner, name="other-pc", instruments=[instrument])
    assert announce(bearer(token), source).status_code == 404
    # Knowing a file's sha256 is not having it: another owner's agent must send the bytes (kept once still).
    mallory = make_user("mallory")
    own = make_instrument(mallory, slug="mallory-station")
    theirs, their_token = services.create_agent(owner=mallory, name="mallory-pc", instruments=[own])
    their_source = DataSource.objects.create(
        instrument=own, name="logger", kind=SourceKind.AGENT, agent=theirs, config=source.config
    )
    claimed = announce(bearer(their_token), their_source)
    assert claimed.json()["status"] == "partial" and claimed.json()["offset"] == 0
    assert not RawFile.objects.filter(instrument=own).exists()
    # Users may not ship at all.
    viewer = APIClient()
    viewer.force_login(owner)
    assert announce(viewer, source).status_code == 403


def test_a_zip_of_a_selection_holds_each_file_byte_identical(station):
    owner, instrument, source, agent = station
    second = b"other file\n" * 500
    for content, path in ((CONTENT, "/data/day1.csv"), (second, "/data/day2.csv")):
        announce(agent, source, content, path)
        for offset in range(0, len(content), 2000):
            chunk(agent, content[offset : offset + 2000], offset, sha=hashlib.sha256(content).hexdigest())
    ids = "&".join(f"id={pk}" for pk in RawFile.objects.values_list("pk", flat=True))
    viewer = APIClient()
    viewer.force_login(owner)
    response = viewer.get(f"/api/v1/instruments/{instrument.slug}/raw-files/zip/?{ids}")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        assert archive.read("roof-station/day1.csv") == CONTENT
        assert archive.read("roof-station/day2.csv") == second
    assert viewer.get(f"/api/v1/instruments/{instrument.slug}/raw-files/zip/").status_code == 400
    assert viewer.get(f"/api/v1/instruments/{instrument.slug}/raw-files/zip/?id=999999").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_agents_shipper_resumes_an_interrupted_upload_over_http_and_sends_a_duplicate_no_bytes(
    live_server, tmp_path, station
):
    """The agent's own code (daqbroker_agent.rawfiles) against a real HTTP server: stopped after its first
    chunk, it resumes from the server's offset in the next round; a copy of the file sends no chunk at all."""
    import threading

    from daqbroker_agent.client import ApiClient
    from daqbroker_agent.rawfiles import RawShipper
    from daqbroker_agent.sources import spec_from_server
    from daqbroker_agent.spool import Spool

    owner, instrument, source, _ = station
    source.agent, token = services.create_agent(owner=owner, name="shipper-pc", instruments=[instrument])
    folder = tmp_path / "logger"
    folder.mkdir()
    source.config = {"collect": {**source.config["collect"], "path": str(folder), "final_line_after": 0.1}}
    source.save()
    content = bytes(range(256)) * 40  # 10,240 bytes: six chunks of at most 2,000
    (folder / "day1.csv").write_bytes(content)
    spec = spec_from_server(
        {"id": source.pk, "name": "logger", "instrument": instrument.slug, "interval_seconds": 1,
         "collect": {"pattern": "*", **source.config["collect"]}}
    )  # fmt: skip

    class Interrupting(ApiClient):
        """Stops the shipper once ``after`` chunks went through (as a SIGTERM would)."""

        def __init__(self, *args, stop, after, **kwargs):
            super().__init__(*args, **kwargs)
            self.stop, self.after, self.chunks = stop, after, 0

        def request(self, method, path, body=None, headers=None):
            reply = super().request(method, path, body, headers)
            if method == "PUT":
                self.chunks += 1
                if self.chunks >= self.after:
                    self.stop.set()
            return reply

    spool = Spool(tmp_path / "spool")
    stop = threading.Event()
    client = Interrupting(live_server.url, lambda: token, stop=stop, after=2)
    assert RawShipper(spool, client, stop).ship_round([spec], now=time.time() + 60) == 0
    assert RawUpload.objects.get().received == 4000 and not RawFile.objects.exists()

    resumed = Interrupting(live_server.url, lambda: token, stop=threading.Event(), after=99)
    assert RawShipper(spool, resumed, resumed.stop).ship_round([spec], now=time.time() + 60) == 1
    assert resumed.chunks == 4  # 4,000 to 10,240 in four chunks: the first two were not sent again
    raw = RawFile.objects.get()
    assert raw_files.blob_path(raw.sha256).read_bytes() == content

    (folder / "copy.csv").write_bytes(content)
    again = Interrupting(live_server.url, lambda: token, stop=threading.Event(), after=99)
    assert RawShipper(spool, again, again.stop).ship_round([spec], now=time.time() + 60) == 1
    assert again.chunks == 0 and RawFile.objects.count() == 2


def test_the_servers_own_raw_copies_are_listed_and_downloaded_beside_the_agents(station, settings):
    """A file source's raw copies (``DAQBROKER_ARCHIVE_DIR/<instrument>/source-<id>/``) on the page and in the
    API, through the same gate; a name with a folder, another instrument's source or a link: 404."""
    from collection.collectors.file import archive_path

    owner, instrument, _, _ = station
    own = DataSource.objects.create(
        instrument=instrument, name="server logger", kind=SourceKind.FILE, config=FILE_CONFIG
    )
    copy = archive_path(own, "day 1.csv", "dev:ino")
    copy.parent.mkdir(parents=True)
    copy.write_bytes(CONTENT)
    renamed = settings.DAQBROKER_ARCHIVE_DIR / "old-slug" / f"source-{own.pk}"  # written before a rename
    renamed.mkdir(parents=True)
    (renamed / "old.csv").write_bytes(b"old\n")
    elsewhere = make_instrument(make_user("zed"), slug="elsewhere")
    theirs = DataSource.objects.create(instrument=elsewhere, name="theirs", kind=SourceKind.FILE, config=FILE_CONFIG)
    (settings.DAQBROKER_ARCHIVE_DIR / "elsewhere" / f"source-{theirs.pk}").mkdir(parents=True)
    (settings.DAQBROKER_ARCHIVE_DIR / "elsewhere" / f"source-{theirs.pk}" / "secret.csv").write_bytes(b"no\n")
    (copy.parent / "link.csv").symlink_to(
        settings.DAQBROKER_ARCHIVE_DIR / "elsewhere" / f"source-{theirs.pk}" / "secret.csv"
    )

    viewer = APIClient()
    viewer.force_login(owner)
    listed = viewer.get(f"/api/v1/instruments/{instrument.slug}/raw-files/server/").json()
    assert listed["count"] == 2
    names = {row["name"]: row for row in listed["results"]}
    assert set(names) == {copy.name, "old.csv"}
    assert names[copy.name]["size"] == len(CONTENT) and names[copy.name]["source"] == "server logger"
    download = viewer.get(names[copy.name]["download"])
    assert download.status_code == 200 and b"".join(download.streaming_content) == CONTENT
    base = f"/api/v1/instruments/{instrument.slug}/raw-files/server"
    assert viewer.get(f"{base}/{own.pk}/link.csv/").status_code == 404
    assert viewer.get(f"{base}/{own.pk}/..%2Fsource-{own.pk}%2F{copy.name}/").status_code == 404
    assert viewer.get(f"{base}/{theirs.pk}/secret.csv/").status_code == 404  # not this instrument's source
    assert viewer.get(f"/api/v1/instruments/elsewhere/raw-files/server/{theirs.pk}/secret.csv/").status_code == 404

    page = viewer.get(f"/instruments/{instrument.slug}/raw-files/")
    assert page.status_code == 200 and "Copies kept by this server" in page.content.decode()
    assert f"/instruments/{instrument.slug}/raw-files/server/{own.pk}/{copy.name.replace(' ', '%20')}/" in (
        page.content.decode()
    )
    got = viewer.get(f"/instruments/{instrument.slug}/raw-files/server/{own.pk}/{copy.name}/")
    assert got.status_code == 200 and b"".join(got.streaming_content) == CONTENT
    assert "Raw files" in viewer.get(f"/instruments/{instrument.slug}/").content.decode()
    stranger = APIClient()
    stranger.force_login(make_user("stranger"))
    assert stranger.get(f"{base}/").status_code == 404
    assert stranger.get(f"{base}/{own.pk}/{copy.name}/").status_code == 404
    assert stranger.get(f"/instruments/{instrument.slug}/raw-files/server/{own.pk}/{copy.name}/").status_code == 404


# -- the archive's clean-up (raw_files.clean_archive) --------------------------------------------------


def _content(data: bytes, *, age: timedelta | None = timedelta(days=2)) -> tuple[str, Path]:
    sha = hashlib.sha256(data).hexdigest()
    path = raw_files.blob_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age is not None:
        moment = time.time() - age.total_seconds()
        os.utime(path, (moment, moment))
    return sha, path


def _name(instrument, sha: str, size: int, path: str = "/data/x.csv") -> RawFile:
    return RawFile.objects.create(
        instrument=instrument, name=path.rsplit("/", 1)[-1], path=path, sha256=sha, size=size,
        modified="2026-12-01T00:00:00Z",
    )  # fmt: skip


def test_the_clean_up_removes_only_contents_nothing_names_nor_uploads_nor_just_wrote(station, settings):
    from collection.tasks import clean_raw_file_archive_task

    _owner, instrument, source, _ = station
    named_sha, named = _content(b"named\n")
    _name(instrument, named_sha, 6)
    _, unnamed = _content(b"nobody names me\n")
    _, recent = _content(b"an upload finishing\n", age=None)  # renamed into place a moment ago
    uploading_sha, uploading = _content(b"in progress\n")
    RawUpload.objects.create(
        agent=source.agent, source=source, sha256=uploading_sha, size=12, name="p.csv", path="/data/p.csv",
        modified="2026-12-01T00:00:00Z",
    )  # fmt: skip
    foreign = named.parent / "notes.txt"  # not a content: never touched
    foreign.write_text("kept")

    result = clean_raw_file_archive_task.apply().get()
    assert (result["contents_removed"], result["bytes_freed"], result["files_deleted"]) == (1, 16, 0)
    assert not unnamed.exists()
    assert named.exists() and recent.exists() and uploading.exists() and foreign.exists()
    assert clean_raw_file_archive_task.apply().get()["contents_removed"] == 0  # safe to run again


def test_retention_deletes_old_raw_files_audited_then_their_contents_and_old_server_copies(station, settings):
    from accounts.choices import AuditAction
    from accounts.models import AuditEvent
    from collection.collectors.file import archive_path

    settings.DAQBROKER_RAW_FILE_DAYS = 30
    _owner, instrument, _source, _ = station
    old_sha, old_blob = _content(b"old day\n", age=timedelta(days=40))
    shared_sha, shared_blob = _content(b"shared\n", age=timedelta(days=40))
    old = _name(instrument, old_sha, 8, "/data/old.csv")
    shared_old = _name(instrument, shared_sha, 7, "/data/a.csv")
    kept = _name(instrument, shared_sha, 7, "/data/b.csv")  # the same content, received recently
    RawFile.objects.filter(pk__in=[old.pk, shared_old.pk]).update(received=timezone.now() - timedelta(days=40))
    own = DataSource.objects.create(
        instrument=instrument, name="server logger", kind=SourceKind.FILE, config=FILE_CONFIG
    )
    stale = archive_path(own, "old.csv", "a")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old\n")
    os.utime(stale, (time.time() - 40 * 86400,) * 2)
    fresh = archive_path(own, "today.csv", "b")
    fresh.write_bytes(b"today\n")

    result = raw_files.clean_archive()
    assert (result.files_deleted, result.contents_removed, result.copies_removed) == (2, 1, 1)
    assert list(RawFile.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not old_blob.exists() and shared_blob.exists()
    assert not stale.exists() and fresh.exists()
    event = AuditEvent.objects.get(action=AuditAction.RAW_FILES_DELETED)
    assert event.changes == {"reason": "retention", "retention_days": 30, "deleted": 2}
    assert event.object_id == str(instrument.pk)


def test_a_content_set_aside_by_a_stopped_clean_up_is_put_back_if_named(station):
    _owner, instrument, _, _ = station
    named_sha, named = _content(b"named\n")
    _name(instrument, named_sha, 6)
    held = named.with_name(named.name + raw_files.COLLECTING)
    named.rename(held)
    _, unnamed = _content(b"unnamed\n")
    unnamed_held = unnamed.with_name(unnamed.name + raw_files.COLLECTING)
    unnamed.rename(unnamed_held)

    result = raw_files.clean_archive()
    assert named.read_bytes() == b"named\n" and not held.exists()
    assert not unnamed_held.exists() and not unnamed.exists() and result.contents_removed == 1


def test_a_known_content_whose_bytes_are_gone_is_sent_again(station):
    """begin() skips the upload only while the bytes are there: the clean-up may have set them aside."""
    _owner, instrument, source, agent = station
    _name(instrument, SHA, len(CONTENT), "/data/day1.csv")  # named, but its bytes are not in the archive
    answer = announce(agent, source).json()
    assert (answer["status"], answer["offset"]) == ("partial", 0)
    for offset in range(0, len(CONTENT), 2000):
        last = chunk(agent, CONTENT[offset : offset + 2000], offset)
    assert last.json()["status"] == "stored" and raw_files.blob_path(SHA).read_bytes() == CONTENT
