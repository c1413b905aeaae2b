"""Settings: sizes, MIME overrides, env / config file / flags precedence, and start-up errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ByteSize, TypeAdapter, ValidationError

from app.cli import build_parser, load_settings
from app.settings import (
    Settings,
    env_name,
    parse_mime_types,
    parse_size,
)
from app.storage.locations import AwsCredentials, S3Location, parse_storage
from tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "ferry.env.example"

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("65536", 65536),
        ("0", 0),
        ("64KiB", 64 * KiB),
        ("64kib", 64 * KiB),
        (" 4MiB ", 4 * MiB),
        ("4MiB", 4 * MiB),
        ("256KiB", 256 * KiB),
        ("1GiB", GiB),
        ("100GiB", 100 * GiB),
        ("1TiB", TiB),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("1TB", 1000**4),
        ("10B", 10),
        # Undocumented but accepted: a bare or "i" unit is binary too.
        ("64k", 64 * KiB),
        ("4m", 4 * MiB),
        ("64Ki", 64 * KiB),
    ],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


# The forms the docs give (settings help, config/ferry.env.example, README).
DOCUMENTED_SIZES = ["65536", "64KiB", "256KiB", "1MiB", "4MiB", "1GiB", "100GiB", "1KB", "1MB", "1GB"]


@pytest.mark.parametrize("text", DOCUMENTED_SIZES)
def test_parse_size_agrees_with_pydantic_bytesize_on_the_documented_forms(text: str) -> None:
    # ...and only there, which is why Ferry keeps its own: ByteSize reads "64k" as 64000, and takes
    # "1.5MiB", "4PiB", "+1", "1_000" and "4 MiB B", all refused above.
    assert parse_size(text) == TypeAdapter(ByteSize).validate_python(text)


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "-1", "+1", "1.5MiB", "4PiB", "MiB", "64KiBs", "0x10", "1e6", "4 MiB B", "1_000"]
)
def test_parse_size_rejects_bad_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_passes_integers_through() -> None:
    assert parse_size(4096) == 4096


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        (".log=text/plain", {".log": "text/plain"}),
        (
            ".log=text/plain,.m3u8=application/vnd.apple.mpegurl",
            {".log": "text/plain", ".m3u8": "application/vnd.apple.mpegurl"},
        ),
        (" .LOG = text/plain , ", {".log": "text/plain"}),
        ("log=text/plain", {".log": "text/plain"}),
    ],
)
def test_parse_mime_types_pairs(text: str, expected: dict[str, str]) -> None:
    assert parse_mime_types(text) == expected


@pytest.mark.parametrize("text", ["log", ".log=", "=text/plain", ".log=plain", ".log=text/plain\r\nX: y"])
def test_parse_mime_types_rejects_bad_pairs(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mime_types(text)


def test_settings_defaults(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    assert s.root == tmp_path.resolve()
    assert (s.host, s.port, s.workers) == ("0.0.0.0", 8000, 1)
    assert s.chunk_size == MiB
    assert s.zero_copy == "auto"
    assert (s.follow_symlinks, s.show_hidden) == (False, False)
    assert s.max_ranges == 16
    assert s.disposition == "attachment"
    assert s.mime_types == {}
    assert s.write_buffer == 256 * KiB


ENV = {
    "FERRY_HOST": "127.0.0.1",
    "FERRY_PORT": "9000",
    "FERRY_WORKERS": "2",
    "FERRY_CHUNK_SIZE": "64KiB",
    "FERRY_ZERO_COPY": "off",
    "FERRY_FOLLOW_SYMLINKS": "true",
    "FERRY_SHOW_HIDDEN": "1",
    "FERRY_MAX_RANGES": "4",
    "FERRY_DISPOSITION": "inline",
    "FERRY_MIME_TYPES": ".log=text/plain,.m3u8=application/vnd.apple.mpegurl",
    "FERRY_WRITE_BUFFER": "1MiB",
}


def check_env_values(s: Settings, root: Path) -> None:
    assert s.root == root.resolve()
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 9000, 2)
    assert s.chunk_size == 64 * KiB
    assert s.zero_copy == "off"
    assert (s.follow_symlinks, s.show_hidden) == (True, True)
    assert s.max_ranges == 4
    assert s.disposition == "inline"
    assert s.mime_types == {".log": "text/plain", ".m3u8": "application/vnd.apple.mpegurl"}
    assert s.write_buffer == MiB


def test_settings_env_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**ENV, "FERRY_ROOT": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    check_env_values(Settings(_env_file=None), tmp_path)


def test_settings_config_file_applies(tmp_path: Path) -> None:
    env_file = tmp_path / "ferry.env"
    env_file.write_text(
        "# a comment\n" + "".join(f"{k}={v}\n" for k, v in {**ENV, "FERRY_ROOT": str(tmp_path)}.items())
    )
    check_env_values(Settings(_env_file=env_file), tmp_path)


def test_settings_env_beats_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "ferry.env"
    env_file.write_text(f"FERRY_ROOT={tmp_path}\nFERRY_PORT=9001\nFERRY_CHUNK_SIZE=4MiB\n")
    monkeypatch.setenv("FERRY_PORT", "9002")
    s = Settings(_env_file=env_file)
    assert s.port == 9002
    assert s.chunk_size == 4 * MiB


def test_settings_config_file_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "ferry.env").write_text(f"FERRY_ROOT={tmp_path}\nFERRY_MAX_RANGES=3\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().max_ranges == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", "70000"),
        ("port", "-1"),
        ("port", "http"),
        ("workers", "0"),
        ("chunk_size", "1"),
        ("chunk_size", "lots"),
        ("chunk_size", "1TiB"),
        ("zero_copy", "maybe"),
        ("follow_symlinks", "perhaps"),
        ("show_hidden", "2"),
        ("max_ranges", "0"),
        ("disposition", "download"),
        ("mime_types", "log"),
        ("write_buffer", "1"),
        ("host", ""),
        ("hash_rate", "fast"),
        ("mirrors", "ftp://mirror.example"),
        ("mirrors", "https://m.example/a b"),
        ("public_url", "files.example"),
        ("public_url", "https://files.example/?x=1"),
    ],
)
def test_settings_bad_values_name_the_field(tmp_path: Path, field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tmp_path, **{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_settings_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        make_settings(tmp_path / "missing")
    assert info.value.errors()[0]["loc"] == ("root",)


def test_settings_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValidationError):
        make_settings(tmp_path / "file")


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]  # what is tested: assigning to a frozen setting fails


# --- CLI flags ------------------------------------------------------------------------------------------


def serve_args(*argv: str) -> dict[str, Any]:
    args = vars(build_parser().parse_args(["serve", *argv]))
    assert args.pop("command") == "serve"
    return args


def test_cli_has_one_flag_per_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    values = {
        "root": str(tmp_path),
        "host": "127.0.0.1",
        "port": "9000",
        "workers": "2",
        "chunk_size": "64KiB",
        "zero_copy": "off",
        "max_ranges": "4",
        "disposition": "inline",
        "mime_types": ".log=text/plain,.m3u8=application/vnd.apple.mpegurl",
        "write_buffer": "1MiB",
        "index_path": str(tmp_path.parent / "elsewhere" / "index.sqlite3"),
        "rescan_interval": "60",
        "write_token": "t0ken",
        "max_upload_size": "1GiB",
        "shutdown_timeout": "10",
        "header_timeout": "5",
        "keepalive_timeout": "30",
        "body_timeout": "20",
        "max_url_length": "4KiB",
        "max_headers": "50",
        "max_header_size": "32KiB",
        "max_connections_per_ip": "4",
        "rate_limit": "1MiB",
        "rate_limit_after": "10MiB",
        "cors_origins": "https://app.example",
        "log_format": "json",
        "hash_rate": "64MiB",
        "hash_on_demand_max": "1GiB",
        "mirrors": "https://m1.example/pub/, http://m2.example:8080",
        "public_url": "https://files.example/ferry/",
        "download_auth": "signed",
        "read_tokens": "reader-1, reader-2",
        "signing_keys": "new-key-0123456789,old-key-0123456789",
        "storage": "s3://media/films/",
        "s3_endpoint": "http://127.0.0.1:8333/",
        "s3_region": "eu-west-3",
        "s3_downloads": "redirect",
        "s3_part_size": "16MiB",
        "archive_max_files": "5000",
        "archive_max_size": "2GiB",
        "upload_expiry": "3600",
        "fast_path": "off",
    }
    argv = [arg for name, value in values.items() for arg in ("--" + name.replace("_", "-"), value)]
    argv += ["--follow-symlinks", "--show-hidden", "--no-watch", "--no-fsync", "--no-checksums"]
    argv += ["--s3-allow-http", "--no-archives"]
    flags = {"follow_symlinks", "show_hidden", "watch", "fsync", "checksums", "s3_allow_http", "archives"}
    assert set(values) | flags == set(Settings.model_fields)
    s = load_settings(serve_args(*argv))
    check_env_values(s, tmp_path)
    assert (s.checksums, s.hash_rate, s.hash_on_demand_max) == (False, 64 * MiB, 1024 * MiB)
    assert s.mirrors == ["https://m1.example/pub", "http://m2.example:8080"]
    assert s.public_url == "https://files.example/ferry"
    assert s.download_auth == "signed"
    assert [t.get_secret_value() for t in s.read_tokens] == ["reader-1", "reader-2"]
    assert [k.get_secret_value() for k in s.signing_keys] == ["new-key-0123456789", "old-key-0123456789"]
    assert s.storage == S3Location("media", "films/")
    assert (s.s3_endpoint, s.s3_region, s.s3_allow_http) == ("http://127.0.0.1:8333", "eu-west-3", True)
    assert (s.s3_downloads, s.s3_part_size) == ("redirect", 16 * MiB)
    assert (s.archives, s.archive_max_files, s.archive_max_size) == (False, 5000, 2048 * MiB)
    assert s.fast_path == "off"


def test_cli_flags_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/ferry.env here
    monkeypatch.setenv("FERRY_ROOT", "/nonexistent-ferry-root")
    monkeypatch.setenv("FERRY_PORT", "9000")
    monkeypatch.setenv("FERRY_FOLLOW_SYMLINKS", "true")
    monkeypatch.setenv("FERRY_CHUNK_SIZE", "64KiB")
    s = load_settings(serve_args("--root", str(tmp_path), "--port", "9100", "--no-follow-symlinks"))
    assert s.root == tmp_path.resolve()
    assert s.port == 9100
    assert s.follow_symlinks is False
    assert s.chunk_size == 64 * KiB  # no flag: the environment still applies


def test_cli_flags_beat_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "ferry.env").write_text(
        f"FERRY_ROOT={tmp_path}\nFERRY_PORT=9001\nFERRY_WORKERS=3\n"
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings(serve_args("--port", "9100"))
    assert (s.port, s.workers) == (9100, 3)


def test_cli_no_flags_means_env_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FERRY_ROOT", str(tmp_path))
    assert load_settings(serve_args()) == make_settings(tmp_path)


@pytest.mark.parametrize(
    ("argv", "env", "setting"),
    [
        pytest.param(["--port", "http"], {}, "FERRY_PORT", id="flag-port"),
        pytest.param(["--chunk-size", "lots"], {}, "FERRY_CHUNK_SIZE", id="flag-chunk-size"),
        pytest.param(["--zero-copy", "maybe"], {}, "FERRY_ZERO_COPY", id="flag-zero-copy"),
        pytest.param([], {"FERRY_MAX_RANGES": "0"}, "FERRY_MAX_RANGES", id="env-max-ranges"),
        pytest.param([], {"FERRY_MIME_TYPES": "log"}, "FERRY_MIME_TYPES", id="env-mime-types"),
        pytest.param([], {"FERRY_SHOW_HIDDEN": "perhaps"}, "FERRY_SHOW_HIDDEN", id="env-show-hidden"),
    ],
)
def test_load_settings_bad_value_exits_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    setting: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        load_settings(serve_args("--root", str(tmp_path), *argv))
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and setting in lines[0]


def run_ferry(cwd: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", *argv],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "env", "setting"),
    [
        pytest.param(["--root", "{missing}"], {}, "FERRY_ROOT", id="missing-root-flag"),
        pytest.param([], {"FERRY_ROOT": "{missing}"}, "FERRY_ROOT", id="missing-root-env"),
        pytest.param(["--root", "{root}", "--port", "99999"], {}, "FERRY_PORT", id="bad-port-flag"),
        pytest.param(
            ["--root", "{root}"], {"FERRY_CHUNK_SIZE": "4 parsecs"}, "FERRY_CHUNK_SIZE", id="bad-env"
        ),
        pytest.param(["--root", "{root}", "--zero-copy", "maybe"], {}, "FERRY_ZERO_COPY", id="bad-choice"),
        pytest.param(["--root", "{root}"], {"FERRY_WORKERS": "many"}, "FERRY_WORKERS", id="bad-workers"),
        pytest.param(
            ["--root", "{root}", "--download-auth", "signed"], {}, "FERRY_SIGNING_KEYS", id="signed-no-keys"
        ),
        pytest.param(
            ["--root", "{root}", "--download-auth", "token"], {}, "FERRY_READ_TOKENS", id="token-no-tokens"
        ),
        pytest.param(
            ["--root", "{root}"], {"FERRY_SIGNING_KEYS": "short"}, "FERRY_SIGNING_KEYS", id="short-key"
        ),
        pytest.param(
            ["--root", "{root}", "--public-url", "files.example"], {}, "FERRY_PUBLIC_URL", id="bad-url"
        ),
    ],
)
def test_ferry_serve_bad_setting_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, argv: list[str], env: dict[str, str], setting: str
) -> None:
    cwd = tmp_path / "cwd"  # no config/ here
    cwd.mkdir()
    names = {"missing": str(tmp_path / "missing"), "root": str(tmp_path)}
    result = run_ferry(
        cwd,
        *(a.format(**names) for a in argv),
        env={k: v.format(**names) for k, v in env.items()},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0]
    assert result.stdout == ""


def test_ferry_serve_unknown_key_in_config_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "ferry.env").write_text("FERRY_CHUNK_SIZ=4MiB\n")
    result = run_ferry(tmp_path, "--root", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "FERRY_CHUNK_SIZ" in lines[0], result.stderr


# --- the documented example ------------------------------------------------------------------------------

EXAMPLE_LINE = re.compile(r"^#?\s*(FERRY_[A-Z0-9_]+)=(.*)$")


def example_settings() -> dict[str, str]:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing"
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = EXAMPLE_LINE.match(line.strip())
        if match:
            assert match.group(1) not in found, f"{match.group(1)} listed twice"
            found[match.group(1)] = match.group(2)
    return found


def test_config_example_lists_exactly_the_settings() -> None:
    assert set(example_settings()) == {env_name(name) for name in Settings.model_fields}


def test_config_example_values_are_valid(tmp_path: Path) -> None:
    values = {**example_settings(), "FERRY_ROOT": str(tmp_path)}
    env_file = tmp_path / "ferry.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    Settings(_env_file=env_file)


def test_index_path_inside_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must be outside FERRY_ROOT"):
        make_settings(tmp_path, index_path=tmp_path / "sub" / "index.sqlite3")


def test_index_file_defaults_to_var_beside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(tmp_path)
    assert make_settings(root).index_file == tmp_path.resolve() / "var" / "index.sqlite3"


def test_index_file_moves_to_the_user_cache_when_the_default_is_inside_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.chdir(root)  # `ferry serve --root .`
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    index_file = make_settings(root).index_file
    assert index_file.parent == (tmp_path / "cache" / "ferry").resolve()
    assert not index_file.is_relative_to(root.resolve())


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Settings") : readme.index("## Downloading")]
    missing = [
        f"FERRY_{name.upper()}" for name in Settings.model_fields if f"FERRY_{name.upper()}" not in table
    ]
    assert not missing, f"README's settings table lacks {missing}"


# --- object storage (FERRY_STORAGE=s3://...) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("s3://media", S3Location("media", "")),
        ("s3://media/", S3Location("media", "")),
        ("s3://my.bucket-1/films", S3Location("my.bucket-1", "films/")),
        ("s3://media/films/2024/", S3Location("media", "films/2024/")),
        ("s3://media/résumé 数据", S3Location("media", "résumé 数据/")),
    ],
)
def test_storage_reads_a_bucket_and_a_prefix(text: str, expected: S3Location | None) -> None:
    assert parse_storage(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("/srv/files", "is not s3://BUCKET"),
        ("S3://media", "is not s3://BUCKET"),
        ("https://media.s3.amazonaws.com", "is not s3://BUCKET"),
        ("s3://", "is not an S3 bucket name"),
        ("s3://ab", "is not an S3 bucket name"),
        ("s3://Media", "is not an S3 bucket name"),
        ("s3://me_dia", "is not an S3 bucket name"),
        ("s3://-media", "is not an S3 bucket name"),
        ("s3://me..dia", "is not an S3 bucket name"),
        ("s3://" + "a" * 64, "is not an S3 bucket name"),
        ("s3://media/../etc", "is not a plain key prefix"),
        ("s3://media/a/../b", "is not a plain key prefix"),
        ("s3://media/a/./b", "is not a plain key prefix"),
        ("s3://media/a//b", "is not a plain key prefix"),
        ("s3://media/a\\b", "is not a plain key prefix"),
        ("s3://media/a\x01b", "is not a plain key prefix"),
        ("s3://media/.ferry-upload-x", "is not a plain key prefix"),
    ],
)
def test_storage_refuses_what_is_not_a_bucket_and_plain_prefix(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_storage(text)


def test_storage_prefix_hidden_needs_show_hidden(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="FERRY_STORAGE prefix '.private/' is hidden"):
        make_settings(tmp_path, storage="s3://media/.private")
    assert make_settings(tmp_path, storage="s3://media/.private", show_hidden=True).storage == S3Location(
        "media", ".private/"
    )


def test_storage_default_is_the_local_root(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    assert (s.storage, s.s3_endpoint, s.s3_region, s.s3_allow_http) == (None, None, None, False)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://s3.example.net", "https://s3.example.net"),
        ("http://127.0.0.1:8333/", "http://127.0.0.1:8333"),
        ("", None),
    ],
)
def test_s3_endpoint_is_a_base_url(tmp_path: Path, endpoint: str, expected: str | None) -> None:
    assert make_settings(tmp_path, s3_endpoint=endpoint, s3_allow_http=True).s3_endpoint == expected


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8333", "ftp://host", "http://host/path", "http://"])
def test_s3_endpoint_refuses_what_is_not_a_base_url(tmp_path: Path, endpoint: str) -> None:
    with pytest.raises(ValidationError, match="is not an endpoint URL"):
        make_settings(tmp_path, s3_endpoint=endpoint, s3_allow_http=True)


def test_plain_http_endpoint_needs_allow_http(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="plain HTTP: set FERRY_S3_ALLOW_HTTP=true"):
        make_settings(tmp_path, s3_endpoint="http://127.0.0.1:8333")
    assert make_settings(tmp_path, s3_endpoint="https://s3.example.net").s3_allow_http is False


def test_aws_credentials_come_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")
    creds = AwsCredentials()
    assert creds.aws_access_key_id is not None and creds.aws_secret_access_key is not None
    assert creds.aws_access_key_id.get_secret_value() == "AKIDEXAMPLE"
    assert creds.aws_secret_access_key.get_secret_value() == "wJalrXUtnFEMI"
    assert creds.aws_session_token is None  # empty is unset
    assert "wJalrXUtnFEMI" not in repr(creds)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "go together"),
        ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}, "go together"),
        ({"AWS_SESSION_TOKEN": "token"}, "AWS_SESSION_TOKEN needs"),
    ],
)
def test_aws_credentials_half_given_are_refused(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], words: str
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=words):
        AwsCredentials()


def _serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--root", str(tmp_path), "--port", "0"],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_half_given_credentials_names_them(tmp_path: Path) -> None:
    result = _serve(tmp_path, {"FERRY_STORAGE": "s3://media", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "AWS_SECRET_ACCESS_KEY" in lines[0], result.stderr


def test_serve_with_a_bad_storage_names_the_setting(tmp_path: Path) -> None:
    result = _serve(tmp_path, {"FERRY_STORAGE": "s3://media/../etc"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: invalid setting FERRY_STORAGE:"), result.stderr
