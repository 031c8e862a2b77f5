"""Startup validation of settings against the real binary: bad `--override`s make `sluice serve`
exit with status 2 and one line per problem (key, bad value, what is allowed) before it binds a
port or touches the data directory; valid group and producer settings start a serving broker."""

import subprocess

from helpers import free_port


def serve(sluice_bin, data_dir, port, *overrides, timeout=30):
    cmd = [str(sluice_bin), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
           "--admin-listen", f"127.0.0.1:{free_port()}", "--shards", "1"]
    for override in overrides:
        cmd += ["--override", override]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_every_bad_setting_is_reported_and_nothing_starts(sluice_bin, tmp_path):
    data_dir = tmp_path / "never-created"
    port = free_port()
    proc = serve(
        sluice_bin, data_dir, port,
        "group.max.size=lots",
        "offsets.retention.minutes=4294967297",
        "group.min.session.timeout.ms=9000",
        "group.max.session.timeout.ms=8000",
        "producer.id.expiration.ms=0",
        "group.max.sise=3",
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, f"exit {proc.returncode}: {err}"
    assert "panicked" not in err, err
    expected = [
        "5 configuration errors:",
        "unknown setting 'group.max.sise'",
        "setting 'group.max.size': invalid value 'lots'; allowed: an integer from 1 to 2147483647",
        # 2^32 + 1 would have been 1 after an `as i32`.
        "setting 'offsets.retention.minutes': invalid value '4294967297'; "
        "allowed: an integer from 1 to 2147483647",
        "setting 'producer.id.expiration.ms': invalid value '0'; "
        "allowed: an integer from 1 to 2147483647",
        "settings 'group.min.session.timeout.ms' and 'group.max.session.timeout.ms': "
        "the minimum session timeout (9000 ms) is above the maximum (8000 ms)",
    ]
    for line in expected:
        assert line in err, f"{line!r} not in:\n{err}"
    assert "sluice is serving" not in err
    assert not data_dir.exists(), "the data directory was touched before the settings were valid"


def test_one_bad_value_is_one_line(sluice_bin, tmp_path):
    proc = serve(sluice_bin, tmp_path / "d", free_port(), "group.initial.rebalance.delay.ms=soon")
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode == 2, err
    assert err == ("sluice: setting 'group.initial.rebalance.delay.ms': invalid value 'soon'; "
                   "allowed: an integer from 0 to 2147483647"), err


def test_valid_group_and_producer_settings_start_the_broker(broker_factory):
    broker = broker_factory({
        "group.min.session.timeout.ms": 1000,
        "group.max.session.timeout.ms": 1000,
        "group.max.size": 3,
        "offsets.retention.minutes": 1,
        "producer.id.expiration.ms": 1000,
        "producer.states.per.partition.max": 10,
    })
    assert broker.alive()
    assert "configuration error" not in broker.log_text()
