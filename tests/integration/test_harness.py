"""Self-tests of the fixtures in conftest.py, with stand-in binaries instead of sluice: a broker
that exits at startup must fail fast with its log, and one that never answers must time out and
be killed. These run even before the broker exists."""

import os
import stat
import time

import pytest
from conftest import Broker, BrokerStartError

import helpers


def _fake_bin(tmp_path, body: str):
    path = tmp_path / "fake-sluice"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_early_exit_fails_fast_with_log_tail(tmp_path):
    binary = _fake_bin(tmp_path, 'echo "fatal: io_uring refused (EPERM)"; exit 3')
    b = Broker(binary, tmp_path / "b")
    t0 = time.monotonic()
    with pytest.raises(BrokerStartError) as info:
        b.start()
    assert time.monotonic() - t0 < 5, "an early exit must be reported at once, not after a timeout"
    text = str(info.value)
    assert "exited with code 3" in text
    assert "io_uring refused" in text, "the failure must carry the broker's log tail"
    assert not b.alive()


def test_silent_broker_times_out_and_is_killed(tmp_path):
    # Silent when served, but `serve --help` (the harness's probe for --admin-listen) answers
    # at once instead of hanging for the probe's 10 s timeout.
    binary = _fake_bin(tmp_path, 'case "$2" in --help) exit 0;; esac; exec sleep 600')
    b = Broker(binary, tmp_path / "b")
    b.start(wait=False)
    pid = b.proc.pid
    with pytest.raises(BrokerStartError, match="did not answer ApiVersions"):
        b.wait_ready(timeout_s=1.0)
    assert not b.alive()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_command_line_carries_overrides(tmp_path):
    binary = _fake_bin(tmp_path, "exit 0")
    b = Broker(binary, tmp_path / "b", shards=3,
               overrides={"message.max.bytes": 2000, "auto.create.topics.enable": False})
    cmd = b.command()
    assert cmd[1] == "serve"
    assert cmd[cmd.index("--listen") + 1] == b.bootstrap
    assert cmd[cmd.index("--data-dir") + 1] == str(b.data_dir)
    assert cmd[cmd.index("--shards") + 1] == "3"
    assert "message.max.bytes=2000" in cmd
    assert "auto.create.topics.enable=false" in cmd


def test_record_batch_codec_round_trip():
    batch = helpers.encode_record_batch([(b"k1", b"v1"), (None, b"v2"), (b"k3", None)],
                                        base_offset=7)
    (parsed,) = helpers.parse_record_batches(batch)
    assert parsed.crc_ok and parsed.magic == 2
    assert (parsed.base_offset, parsed.last_offset, parsed.record_count) == (7, 9, 3)
    bad = helpers.encode_record_batch([(b"k", b"v")], corrupt_crc=True)
    assert not helpers.parse_record_batches(bad)[0].crc_ok


def test_kcat_frame_parser_is_binary_safe():
    data = b"0 5 1000 3 4\nk\nyv\x00\n\n" + b"1 0 1001 -1 0\n"
    recs = helpers.parse_kcat_frames(data)
    assert [(r.partition, r.offset, r.key, r.value) for r in recs] == [
        (0, 5, b"k\ny", b"v\x00\n\n"),
        (1, 0, None, b""),
    ]
