"""transactional.id.expiration.ms against the real broker, with confluent-kafka producers.

An id whose transaction ended and whose coordinator wrote nothing for it for the expiration
time is forgotten: ListTransactions no longer lists it, DescribeTransactions answers
TRANSACTIONAL_ID_NOT_FOUND, a tombstone for it is in `__transaction_state` (so a restart
with a seven-day expiration still does not know it: without the tombstone the replay would
bring it back), and its next init_transactions gets a new producer id, where a known id
keeps its producer id and bumps the epoch. An id with a transaction open is never expired,
however old: the transaction timeout handles it."""

import uuid

import pytest
from confluent_kafka import Producer

from helpers import create_topic, unique_topic, wait_until
from test_txn_tools import ok, rows, sluice_tool

pytestmark = pytest.mark.timeout(120)

EXPIRATION_MS = 3000


def transactions(sluice_bin, bootstrap):
    """{transactional id: state} from `sluice transactions list`."""
    listed = ok(sluice_tool(sluice_bin, "list", "-b", bootstrap))
    if "\t" not in listed:
        return {}
    return {r["TransactionalId"]: r["TransactionState"] for r in rows(listed)}


def describe(sluice_bin, bootstrap, txn_id):
    """(ProducerId, ProducerEpoch, TransactionState) of `txn_id`, or the tool's stderr."""
    code, out, err = sluice_tool(sluice_bin, "describe", "--transactional-id", txn_id,
                                 "-b", bootstrap)
    if code != 0:
        return err
    row = rows(out)[0]
    return row["ProducerId"], row["ProducerEpoch"], row["TransactionState"]


def committed_transaction(bootstrap, txn_id, topic, timeout_ms=60000):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                  "transaction.timeout.ms": timeout_ms, "linger.ms": 5})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=txn_id.encode(), partition=0)
    p.commit_transaction(30)
    return p


def test_an_idle_transactional_id_expires_with_a_tombstone(broker_factory, sluice_bin):
    broker = broker_factory({
        "transactional.id.expiration.ms": EXPIRATION_MS,
        "transaction.remove.expired.transaction.cleanup.interval.ms": 300,
    })
    topic = create_topic(broker.bootstrap, unique_topic("exp"), 1)
    idle_id = f"idle-{uuid.uuid4().hex[:6]}"
    open_id = f"open-{uuid.uuid4().hex[:6]}"

    idle = committed_transaction(broker.bootstrap, idle_id, topic)
    idle_pid, idle_epoch, state = describe(sluice_bin, broker.bootstrap, idle_id)
    assert state == "CompleteCommit"
    # A second init of a known id keeps its producer id and bumps the epoch.
    idle.flush(5)
    again = committed_transaction(broker.bootstrap, idle_id, topic)
    pid, epoch, _ = describe(sluice_bin, broker.bootstrap, idle_id)
    assert (pid, int(epoch)) == (idle_pid, int(idle_epoch) + 1)
    again.flush(5)

    # A transaction left open longer than the expiration (its timeout is a minute).
    holder = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": open_id,
                       "transaction.timeout.ms": 60000, "linger.ms": 5})
    holder.init_transactions(30)
    holder.begin_transaction()
    holder.produce(topic, value=b"open", partition=0)
    assert holder.flush(30) == 0
    assert transactions(sluice_bin, broker.bootstrap).get(open_id) == "Ongoing"

    wait_until(lambda: idle_id not in transactions(sluice_bin, broker.bootstrap),
               timeout_s=EXPIRATION_MS / 1000 + 10, what=f"{idle_id} expired")
    assert "TRANSACTIONAL_ID_NOT_FOUND" in describe(sluice_bin, broker.bootstrap, idle_id)
    assert "transactional id expired" in broker.log_text()
    # Well past its expiration time, the open transaction is still there and still open.
    assert transactions(sluice_bin, broker.bootstrap).get(open_id) == "Ongoing"
    assert describe(sluice_bin, broker.bootstrap, open_id)[2] == "Ongoing"

    # The replay under a seven-day expiration still does not know the id: the tombstone.
    broker.overrides["transactional.id.expiration.ms"] = 7 * 24 * 3600 * 1000
    broker.restart()
    wait_until(lambda: open_id in transactions(sluice_bin, broker.bootstrap),
               timeout_s=30, what="the transaction state loaded")
    assert idle_id not in transactions(sluice_bin, broker.bootstrap)

    # Its next init starts afresh: a new producer id.
    committed_transaction(broker.bootstrap, idle_id, topic).flush(5)
    new_pid, new_epoch, state = describe(sluice_bin, broker.bootstrap, idle_id)
    assert state == "CompleteCommit"
    assert new_pid != idle_pid, "an expired id gets a new producer id"
