"""The local Label Studio the demo and the tests run keeps one SECRET_KEY across restarts (no server started here)."""

from glus_backend.local_label_studio import LabelStudioServer


def test_secret_key_is_stable_and_safe_for_django_environ(tmp_path):
    server = LabelStudioServer(tmp_path / "ls", port=1)
    key = server._env()["SECRET_KEY"]
    assert len(key) >= 40 and not key.startswith("$") and "$" not in key  # "$..." reads as a variable reference
    assert LabelStudioServer(tmp_path / "ls", port=1)._env()["SECRET_KEY"] == key  # the same after a restart
    assert (tmp_path / "ls" / "secret_key").stat().st_mode & 0o077 == 0  # not readable by other users


def test_an_existing_data_dir_keeps_the_key_label_studio_was_using(tmp_path):
    data = tmp_path / "ls" / "data"
    data.mkdir(parents=True)
    (data / ".env").write_text("\nSECRET_KEY=$lost-on-restart\n\nSECRET_KEY=abc123-readable\n")
    assert LabelStudioServer(tmp_path / "ls", port=1)._env()["SECRET_KEY"] == "abc123-readable"
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "data" / ".env").write_text("SECRET_KEY=$unreadable\n")
    assert not LabelStudioServer(tmp_path / "other", port=1)._env()["SECRET_KEY"].startswith("$")
